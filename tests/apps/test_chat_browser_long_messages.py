"""Long messages on the chat page (issue 14, finding 7): sent whole up to the hub's limit,
never cut; the size shown near the limit; a clear error beyond it, with the text kept. And
tether.js against the real hub: a publish the hub refuses as too_big fails its promise with
that code and is not sent again after a reconnect. Headless Chromium, as in
test_chat_browser.py.
"""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import Page, expect

from .conftest import ChatServer, Pages
from .test_chat_browser import (  # noqa: F401  (time_limit: autouse, applies here too)
    messages,
    send,
    time_limit,
)

LIMIT = 65536  # the hub's default max_frame, which the welcome frame tells the page


def publishes(pages: Pages, page: Page) -> list[dict[str, Any]]:
    """The publish frames `page` sent, parsed."""
    frames = (json.loads(frame) for frame in pages.frames_sent[page])
    return [frame for frame in frames if frame["type"] == "publish"]


def test_a_long_message_is_sent_whole(chat_server: ChatServer, pages: Pages) -> None:
    alice = pages.open_chat(chat_server, "alice")
    bob = pages.open_chat(chat_server, "bob")
    text = " ".join(f"word{i}" for i in range(2000))  # 15,889 characters, as if pasted
    send(alice, text)
    for page in (alice, bob):
        expect(page.locator("[data-testid=message][data-seq='1']")).to_have_count(1)
        assert messages(page) == [(1, "alice", text)]  # all of it: nothing cut at 2,000
    expect(alice.get_by_test_id("message-limit")).to_be_hidden()  # far from the limit


def test_the_limit_is_shown_and_enforced(chat_server: ChatServer, pages: Pages) -> None:
    alice = pages.open_chat(chat_server, "alice")
    field = alice.get_by_test_id("message-input")
    limit = alice.get_by_test_id("message-limit")

    # Near the limit: the size, in the bytes the hub counts.
    field.fill("a" * 60_000)
    expect(limit).to_be_visible()
    expect(limit).to_contain_text(f"/ {LIMIT:,} bytes")
    expect(limit).not_to_have_class("message-limit over")

    # Beyond it: an error, and the send refused with the text kept as it was. Bytes, not
    # characters: 33,000 × "é" is 66,000 bytes.
    for text in ("a" * 70_000, "é" * 33_000):
        field.fill(text)
        expect(limit).to_contain_text("Too long to send")
        expect(limit).to_contain_text(f"the limit is {LIMIT:,}")
        expect(limit).to_have_class("message-limit over")
        alice.get_by_test_id("send-button").click()
        field.press("Enter")
        expect(field).to_have_value(text)
        expect(alice.get_by_test_id("pending-message")).to_have_count(0)
    assert publishes(pages, alice) == []

    # Just under it: sent whole.
    under = "b" * (LIMIT - 200)
    field.fill(under)
    expect(limit).to_be_visible()
    expect(limit).not_to_have_class("message-limit over")
    field.press("Enter")
    expect(field).to_have_value("")
    expect(limit).to_be_hidden()
    expect(alice.locator("[data-testid=message][data-seq='1']")).to_have_count(1)
    assert messages(alice) == [(1, "alice", under)]
    [frame] = publishes(pages, alice)
    assert frame["data"] == {"text": under}


# tether.js on the real hub, without knowing its limit: the hub's too_big error echoes the
# publish's id, the promise fails with that code, and a reconnect does not send it again.
TOO_BIG_SCRIPT = """async () => {
  const { TetherClient } = await import("/tether.js");
  const client = new TetherClient("/ws", { name: "big", pingInterval: 0,
                                           backoff: { initial: 10, max: 50 } });
  const next = (type) => new Promise((resolve) => client.addEventListener(
    type, (event) => resolve(event.detail), { once: true }));
  const timeLimit = (promise) => Promise.race([
    promise, new Promise((resolve) => setTimeout(() => resolve("no answer"), 5000))]);
  let subscribed = next("subscribed");
  client.subscribe("general");
  await subscribed;
  const refused = await timeLimit(client.publish("general", { text: "x".repeat(70000) }).then(
    () => "accepted", (error) => ({ code: error.code, message: error.message })));
  subscribed = next("subscribed");
  client.socket.close();                   // a reconnect, as after a network drop
  await subscribed;
  const ack = await timeLimit(client.publish("general", { text: "small" }));
  client.close();
  return { refused, ack };
}"""


def test_a_publish_too_big_for_the_hub_fails(chat_server: ChatServer, pages: Pages) -> None:
    page = pages.new_page()
    page.goto(chat_server.url + "/tether.js")  # the app's origin, to import the module
    out = page.evaluate(TOO_BIG_SCRIPT)
    # The big one went once, never again after the reconnect; then the small one.
    sent = [frame for frame in pages.frames_sent[page] if frame.startswith('{"type":"publish"')]
    assert len(sent) == 2 and len(sent[0]) > LIMIT >= len(sent[1]), [len(f) for f in sent]
    assert out["refused"] == {"code": "too_big", "message": f"frame with {len(sent[0])} bytes "
                              f"exceeds limit of {LIMIT} bytes"}
    assert out["ack"]["seq"] == 1  # the small one; the big one was never stored
