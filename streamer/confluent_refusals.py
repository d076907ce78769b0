"""How librdkafka says "refused" (credentials, certificates, ACLs), as opposed to "down".

librdkafka reports a failed TLS handshake or SASL login through error_cb, and the call that needed
the connection then fails as a bare transport error, exactly as when the broker is down. The
difference matters: a broker that is down is waited for, a refusal stops the command with one
operator's sentence. So the decision is taken by error code, never by words: librdkafka prefixes
every error text with the broker's URL ("sasl_ssl://host:9093/bootstrap: ..."), which would make
every outage of a secured cluster read as a refused login. Used by streamer/confluent_client.py.
"""
from __future__ import annotations

import logging
import re

from confluent_kafka import KafkaError

from streamer.security import PLAINTEXT, KafkaSecurity

client_log = logging.getLogger("kafka.librdkafka")

# Errors that say the broker refuses us (credentials, certificates, ACLs): waiting will not fix them.
_REFUSALS = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
             KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
             KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.ILLEGAL_SASL_STATE,
             KafkaError.UNSUPPORTED_SASL_MECHANISM}


_BROKER_PREFIX = re.compile(r"^\S+://\S+/\S+:\s*")  # librdkafka's "sasl_ssl://host:9093/bootstrap: "
_DROPPED = ("disconnected", "connection reset", "closed by", "eof")  # a _SSL error from a connection cut short


def refusal(err: KafkaError, security: KafkaSecurity | None, where: str) -> str | None:
    """The operator's sentence when `err` means the broker refuses these credentials or this TLS
    setup, else None. Decided by the error code: a broker that is down or restarting reports
    _TRANSPORT / _ALL_BROKERS_DOWN (waited for), a refused handshake _SSL or _AUTHENTICATION.
    librdkafka reports these through error_cb, not through the failed call."""
    if err.code() not in _REFUSALS:
        return None
    security = security or PLAINTEXT
    detail = _BROKER_PREFIX.sub("", err.str())
    if err.code() == KafkaError._SSL:
        if any(word in detail.lower() for word in _DROPPED):
            return None
        return f"TLS handshake with {where} failed: {detail} ({security.ca_text()})"
    if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                      KafkaError.UNSUPPORTED_SASL_MECHANISM, KafkaError.ILLEGAL_SASL_STATE):
        if not security.uses_sasl:
            return f"the broker at {where} requires authentication: {detail} (set kafka_security_protocol)"
        return f"SASL authentication failed for user '{security.sasl_username}' " \
               f"(mechanism {security.sasl_mechanism}) at {where}: {detail}"
    return f"the broker at {where} refused seqcast ({err.name()}): {detail}; check the ACLs of user " \
           f"'{security.sasl_username or 'ANONYMOUS'}'"


class Refusals:
    """An error_cb that keeps the last refusal (see `refusal`) and logs every error once per kind."""

    def __init__(self, security: KafkaSecurity | None, where: str, role: str) -> None:
        self.security, self.where, self.role = security, where, role
        self.last: str | None = None

    def __call__(self, err: KafkaError) -> None:
        described = refusal(err, self.security, self.where)
        if described:
            if described != self.last:  # librdkafka retries every backoff: say it once per cause
                client_log.error("%s: %s", self.role, described)
            self.last = described
        else:
            client_log.warning("%s error: %s", self.role, err)
