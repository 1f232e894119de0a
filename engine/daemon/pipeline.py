"""Pure pieces of the daemon's hot path: topics, decoding with dead letters, output rendering.

No I/O here: ``service.py`` feeds it received messages and publishes what it returns.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from engine.errors import DecodeError
from engine.state import Output
from engine.stores.sqlite_store import OutRow

_JSON = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the daemon uses, from the prefix (default ``geopush``) and the client id."""

    prefix: str = "geopush"
    client_id: str = "geopush-engine"
    owntracks_prefix: str = "owntracks"

    @property
    def events_sub(self) -> str:
        return f"{self.prefix}/events/+"

    @property
    def owntracks_sub(self) -> str:
        return f"{self.owntracks_prefix}/+/+"

    @property
    def control(self) -> str:
        return f"{self.prefix}/control/{self.client_id}"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status/{self.client_id}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}/deadletter"

    def push(self, user: str) -> str:
        return f"{self.prefix}/push/{user}"

    def visits(self, merchant_id: str) -> str:
        return f"{self.prefix}/visits/{merchant_id}"

    def redemptions(self, merchant_id: str, user: str) -> str:
        """Answers to redeem events: the till reads ``.../{merchant_id}/+``, the user's wallet
        ``.../+/{user}``."""
        return f"{self.prefix}/redemptions/{merchant_id}/{user}"

    def outcomes(self, merchant_id: str) -> str:
        """Attributed orders and holdout decisions, for the merchant's reports."""
        return f"{self.prefix}/outcomes/{merchant_id}"

    def events(self, user: str) -> str:
        return f"{self.prefix}/events/{user}"


def digest(topic: str, payload: bytes) -> bytes:
    """Identity of one input message (topic + bytes), for redelivery detection."""
    h = hashlib.blake2b(topic.encode(), digest_size=16)
    h.update(b"\0")
    h.update(payload)
    return h.digest()


class Decoder:
    """Topic + payload -> events, or a DecodeError with reason (the caller dead-letters it)."""

    def __init__(self, topics: Topics) -> None:
        from engine import events as ev

        self._decode = ev.decode
        self._decode_owntracks: Any = getattr(ev, "decode_owntracks", None)
        self._max = ev.MAX_PAYLOAD_BYTES
        self._events_prefix = f"{topics.prefix}/events/"
        self._ot_prefix = f"{topics.owntracks_prefix}/"

    def __call__(self, topic: str, payload: bytes) -> list[Any]:
        if len(payload) > self._max:
            raise DecodeError("too_large", f"{len(payload)} bytes > {self._max}")
        if topic.startswith(self._events_prefix):
            user = topic[len(self._events_prefix) :]
            if not user or "/" in user:
                raise DecodeError("bad_topic", f"{topic}: expected <prefix>/events/<user>")
            return list(self._decode(payload, topic_user=user))
        if topic.startswith(self._ot_prefix):
            parts = topic[len(self._ot_prefix) :].split("/")
            if len(parts) != 2 or not all(parts):
                raise DecodeError("bad_topic", f"{topic}: expected owntracks/<user>/<device>")
            if self._decode_owntracks is None:
                raise DecodeError("unsupported", "OwnTracks decoding is not available")
            return list(self._decode_owntracks(payload, user=parts[0], device=parts[1]))
        raise DecodeError("bad_topic", f"{topic}: not an events topic")


DEADLETTER_PAYLOAD_BYTES = 4096  # default --deadletter-payload: the most of a payload kept
_DETAIL_CHARS = 500
_TOPIC_CHARS = 300


def deadletter_row(
    topics: Topics,
    topic: str,
    payload: bytes,
    reason: str,
    detail: str,
    key: bytes,
    ts: float,
    *,
    limit: int = DEADLETTER_PAYLOAD_BYTES,
) -> OutRow:
    """The dead-letter message for a rejected input: topic, reason, detail, the original's
    length (``size``) and SHA-256, and at most ``limit`` bytes of it (``truncated`` when that
    is not all; ``limit`` 0: none, ``"encoding": "none"``). The excerpt is text when it is UTF-8
    and JSON escaping at most doubles it, else base64 (a payload of control characters escapes
    to 6 bytes per byte: a 256 KB one made a 1.5 MB dead letter the broker refused). With the
    default limit a dead letter stays under 16 KiB. Its id derives from the input's digest, so
    a redelivered bad message gives the same dead letter."""
    body: dict[str, Any] = {
        "id": f"dl:{key.hex()}",
        "topic": _clip(topic, _TOPIC_CHARS),
        "reason": reason,
        "detail": _clip(detail, _DETAIL_CHARS),
        "received_ts": round(ts, 6),
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    part = payload[: max(0, limit)]
    body["truncated"] = len(part) < len(payload)
    text = _utf8_prefix(part, cut=body["truncated"]) if part else None
    if not part:
        body["encoding"] = "none"
    elif text is not None and len(_JSON.encode(text)) <= 2 * len(part) + 2:
        body["payload"] = text
        body["encoding"] = "text"
    else:
        body["payload"] = base64.b64encode(part).decode("ascii")
        body["encoding"] = "base64"
    return OutRow(body["id"], topics.deadletter, _JSON.encode(body))


def _clip(s: str, n: int) -> str:
    """At most ``n`` characters of ``s``, encodable (a lone surrogate becomes ``?``)."""
    s = s if len(s) <= n else s[:n] + "..."
    return s.encode("utf-8", "replace").decode("utf-8")


def _utf8_prefix(part: bytes, *, cut: bool) -> str | None:
    """``part`` as text, or None when it is not UTF-8. A ``cut`` excerpt may end inside a
    character: its incomplete last character is dropped."""
    try:
        return part.decode("utf-8")
    except UnicodeDecodeError as exc:
        if cut and exc.start >= len(part) - 3 and exc.reason == "unexpected end of data":
            return part[: exc.start].decode("utf-8")
        return None


class Renderer:
    """Output -> outbox row (topic from the output's kind; payload ``encode_output``).

    One call per output on the daemon's hot path: dispatch on the exact type through a dict,
    topics from prefixes made once (what ``Topics.push`` and friends return, without a method
    call and a format per output); a subclass of an output type takes the general path."""

    def __init__(self, topics: Topics) -> None:
        from engine import outputs

        self._topics = topics
        self._encode = outputs.encode_output
        self._Push = outputs.Push
        self._Visit = outputs.VisitEvent
        self._Redeem = outputs.RedeemResult
        self._Outcome = (outputs.Order, outputs.Holdout)
        enc = outputs.encode_output
        push, visits = topics.push(""), topics.visits("")
        redemptions, outcomes = topics.redemptions("", "")[:-1], topics.outcomes("")

        def render_push(o: Any) -> OutRow:
            return OutRow(o.push_id, push + o.user, enc(o))

        def render_visit(o: Any) -> OutRow:
            return OutRow(o.out_id, visits + o.merchant_id, enc(o))

        def render_redeem(o: Any) -> OutRow:
            return OutRow(o.out_id, f"{redemptions}{o.merchant_id}/{o.user}", enc(o))

        def render_outcome(o: Any) -> OutRow:
            return OutRow(o.out_id, outcomes + o.merchant_id, enc(o))

        self._by_type: dict[type, Any] = {
            outputs.Push: render_push,
            outputs.VisitEvent: render_visit,
            outputs.RedeemResult: render_redeem,
            outputs.Order: render_outcome,
            outputs.Holdout: render_outcome,
        }

    def __call__(self, out: Output) -> OutRow:
        f = self._by_type.get(type(out))
        if f is not None:
            return f(out)  # type: ignore[no-any-return]
        return self.render_slow(out)

    def render_slow(self, out: Output) -> OutRow:
        """The general path (and the reference the fast one is tested against)."""
        if isinstance(out, self._Push):
            return OutRow(out.out_id, self._topics.push(out.user), self._encode(out))
        if isinstance(out, self._Visit):
            return OutRow(out.out_id, self._topics.visits(out.merchant_id), self._encode(out))
        if isinstance(out, self._Redeem):
            topic = self._topics.redemptions(out.merchant_id, out.user)
            return OutRow(out.out_id, topic, self._encode(out))
        if isinstance(out, self._Outcome):
            return OutRow(out.out_id, self._topics.outcomes(out.merchant_id), self._encode(out))
        raise TypeError(f"cannot publish output of type {type(out).__name__}")


__all__ = ["DEADLETTER_PAYLOAD_BYTES", "Decoder", "Renderer", "Topics", "deadletter_row", "digest"]
