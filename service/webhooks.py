"""Webhooks: which URLs a job's notify may name, how a delivery is signed, and one POST of it.

A URL's host must be one of GROCERY_WEBHOOK_ALLOWED_HOSTS, and every address it resolves to public,
or inside GROCERY_WEBHOOK_ALLOWED_NETWORKS: loopback, link-local (the cloud metadata service) and
private addresses are refused, so that a job cannot make the service call into its own network. The
API checks at submission; the workers check again at each attempt (DNS may have changed since) and
connect to the very address they checked. A redirect is never followed. Torch-free."""

import contextlib
import enum
import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.settings import Settings

DELIVERY_HEADER = "Grocery-Delivery"  # the delivery's id, the same at every attempt: deduplicate by it
EVENT_HEADER = "Grocery-Event"  # succeeded, failed or cancelled
ATTEMPT_HEADER = "Grocery-Attempt"
SIGNATURE_HEADER = "Grocery-Signature"  # t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
USER_AGENT = "grocery-jobs-webhooks/1"
DEFAULT_PORTS = {"http": 80, "https": 443}


class Refused(ValueError):
    """A URL the policy refuses (at submission: a 400 naming the field; at delivery: given up)."""

    def __init__(self, message: str, code: str = "url_not_allowed"):
        super().__init__(message)
        self.code = code


class Outcome(enum.StrEnum):
    """What one attempt came to."""

    DELIVERED = "delivered"  # a 2xx answer
    HTTP_ERROR = "http_error"  # another answer
    REDIRECT = "redirect"  # a 3xx answer: not followed
    TIMEOUT = "timeout"  # no whole answer within GROCERY_WEBHOOK_TIMEOUT_SECONDS
    UNREACHABLE = "unreachable"  # no connection, or the name does not resolve
    REFUSED = "refused"  # the URL is not allowed (any more): not tried, and never again


@dataclass(frozen=True)
class Target:
    """A URL the policy allows, and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def checked_target(url: str, settings: Settings) -> Target:
    """The URL's target, its host allowed and every address it resolves to allowed. Raises Refused,
    or OSError (socket.gaierror) when the name does not resolve."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise Refused(f"{url!r} is not an http or https URL", "invalid_parameter")
    if parts.username is not None or parts.password is not None:
        raise Refused("put no credentials in the URL: receivers verify the signature instead", "invalid_parameter")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise Refused(f"{url!r} has an invalid port", "invalid_parameter") from None
    host = parts.hostname.lower()
    if not host_allowed(host, settings.webhook_allowed_hosts):
        raise Refused(f"{host!r} is not one of GROCERY_WEBHOOK_ALLOWED_HOSTS")
    addresses = resolved(host, port)
    for address in addresses:
        if not address_allowed(address, settings.webhook_allowed_networks):
            raise Refused(
                f"{host!r} resolves to {address}, a loopback, link-local, private or reserved address "
                "(GROCERY_WEBHOOK_ALLOWED_NETWORKS may allow it)"
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, str(addresses[0]))


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """An entry names the host, or is *.domain (its subdomains) or * (any host: addresses still checked)."""
    return any(
        entry == "*" or entry == host or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed
    )


def resolved(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # An IPv6 address may carry its interface (fe80::1%eth0): the address alone is judged.
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))


def address_allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in networks):
        return True
    return address.is_global and not address.is_multicast


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The Grocery-Signature header (Stripe's scheme): the receiver recomputes the HMAC with its secret
    and compares in constant time, and refuses an old timestamp (a replay)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status_code: int | None
    error: str | None


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """One POST to the target's checked address, its answer's status taken, its body left unread; the
    whole exchange gets ``timeout`` seconds, however slowly the receiver trickles bytes."""
    connection_class = PinnedHTTPSConnection if target.scheme == "https" else PinnedHTTPConnection
    connection = connection_class(target.host, target.port, target.address, timeout)
    deadline = threading.Timer(timeout, connection.abort)
    deadline.start()
    try:
        connection.request("POST", target.path, body=body, headers={**headers, "User-Agent": USER_AGENT})
        response = connection.getresponse()
        status, reason, location = response.status, response.reason, response.getheader("Location")
    except (OSError, http.client.HTTPException) as e:
        if connection.aborted or isinstance(e, TimeoutError):
            return Answer(Outcome.TIMEOUT, None, f"no answer within {timeout:g}s")
        return Answer(Outcome.UNREACHABLE, None, f"{type(e).__name__}: {e}")
    finally:
        deadline.cancel()
        connection.close()
    if 200 <= status < 300:
        return Answer(Outcome.DELIVERED, status, None)
    if 300 <= status < 400:
        return Answer(
            Outcome.REDIRECT, status, f"answered {status} {reason}, to {location!r}: redirects are not followed"
        )
    return Answer(Outcome.HTTP_ERROR, status, f"answered {status} {reason}")


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to by then; the
    Host header still names the host."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address, self.aborted = address, False

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)

    def abort(self) -> None:
        """Past the deadline: a read blocked on the socket returns at once."""
        self.aborted = True
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)


class PinnedHTTPSConnection(PinnedHTTPConnection):
    """TLS to the checked address, the certificate verified for the host's name."""

    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def signed_headers(*, delivery_id: str, event: str, attempt: int, secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event,
        ATTEMPT_HEADER: str(attempt),
        SIGNATURE_HEADER: signature(secret, int(time.time()), body),
    }
