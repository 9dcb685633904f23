"""Drive a running Open WebUI the way its web page does. Runs INSIDE the Open WebUI venv.

    <venv>/bin/python driver.py turn    < request.json   # socket.io + POST /api/chat/completions
    <venv>/bin/python driver.py browser < request.json   # headless Debian Chromium via Playwright
    (also `approval` and `regenerate_and_edit`: longer browser scenarios, same shape)

It reads one JSON object on stdin and prints one JSON object on stdout. It only
uses what that venv has (python-socketio, the version Open WebUI itself pins;
aiohttp; playwright), so the test interpreter needs none of them: the tests
start this script as a subprocess and assert on its output and on what Open
WebUI stored (`GET /api/v1/chats/{id}`) and what bmo recorded.

`turn` (open-webui.md §3.3, "UI path without a browser"):
  1. connect socket.io at BASE (`/ws/socket.io`, auth token), emit `user-join`;
  2. POST /api/chat/completions with the page's body, `session_id` = our sid;
  3. wait for `chat:completion` with `done: true` (or `chat:message:error`),
     then (optionally) for the background-task events (`chat:title`, follow-ups, tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from typing import Any

import aiohttp

_TASK_EVENTS = {
    "title_generation": "chat:title",
    "follow_up_generation": "chat:message:follow_ups",
    "tags_generation": "chat:tags",
}


async def _signin(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(f"{base}/api/v1/auths/signin", json={"email": "", "password": ""}) as r:
        r.raise_for_status()
        return (await r.json())["token"]


async def _model_item(http: aiohttp.ClientSession, base: str, token: str, model: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/models", headers={"Authorization": f"Bearer {token}"}) as r:
        r.raise_for_status()
        models = (await r.json())["data"]
    for item in models:
        if item.get("id") == model:
            return item
    return {"id": model}  # not listed: Open WebUI will answer "Model not found"


async def turn(req: dict[str, Any]) -> dict[str, Any]:
    import socketio  # the venv's own python-socketio (Open WebUI pins it)

    base: str = req["base"]
    model: str = req["model"]
    timeout: float = float(req.get("timeout", 90))
    wait_tasks: list[str] = list(req.get("wait_tasks", []))
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        token = req.get("token") or await _signin(http, base)
        auth = {"Authorization": f"Bearer {token}"}
        item = await _model_item(http, base, token, model)

        events: list[dict[str, Any]] = []
        seen: set[str] = set()
        finished = asyncio.Event()
        tasks_done = asyncio.Event()
        assistant_id = str(uuid.uuid4())

        sio = socketio.AsyncClient(reconnection=False)

        @sio.on("events")
        async def on_event(payload: dict[str, Any]) -> None:
            data = payload.get("data") or {}
            kind = data.get("type", "")
            if payload.get("message_id") not in (None, assistant_id) and kind.startswith("chat:completion"):
                return
            events.append({"type": kind, "data": data.get("data")})
            seen.add(kind)
            inner = data.get("data") or {}
            if kind == "chat:completion" and isinstance(inner, dict) and inner.get("done"):
                finished.set()
            if kind == "chat:message:error":
                finished.set()
            if all(_TASK_EVENTS[t] in seen for t in wait_tasks):
                tasks_done.set()

        await sio.connect(
            base, socketio_path="/ws/socket.io", auth={"token": token}, transports=["websocket"]
        )
        try:
            await sio.emit("user-join", {"auth": {"token": token}})
            user_id = str(uuid.uuid4())
            parent_id = req.get("parent_id")
            history = list(req.get("history", []))
            messages = [*history, {"role": "user", "content": req["prompt"]}]
            body: dict[str, Any] = {
                "stream": True,
                "model": model,
                "messages": messages,
                "params": {},
                "features": {},
                "variables": {},
                "tool_servers": [],
                "model_item": item,
                "session_id": sio.get_sid("/"),
                "id": assistant_id,
                "parent_id": parent_id,
                "user_message": {
                    "id": user_id,
                    "parentId": parent_id,
                    "childrenIds": [assistant_id],
                    "role": "user",
                    "content": req["prompt"],
                    "timestamp": int(time.time()),
                    "models": [model],
                },
                "background_tasks": req.get(
                    "background_tasks",
                    {"title_generation": True, "tags_generation": True, "follow_up_generation": True},
                ),
            }
            if req.get("chat_id"):
                body["chat_id"] = req["chat_id"]
            async with http.post(f"{base}/api/chat/completions", json=body, headers=auth) as r:
                status = r.status
                reply = await r.json(content_type=None)
            result: dict[str, Any] = {
                "post_status": status,
                "post_reply": reply,
                "assistant_id": assistant_id,
                "user_message_id": user_id,
                "chat_id": (reply or {}).get("chat_id") if isinstance(reply, dict) else None,
            }
            if status == 200:
                try:
                    await asyncio.wait_for(finished.wait(), timeout)
                    result["done"] = True
                except TimeoutError:
                    result["done"] = False
                if wait_tasks and result["done"]:
                    with contextlib.suppress(TimeoutError):  # the stored chat tells what arrived
                        await asyncio.wait_for(tasks_done.wait(), timeout)
        finally:
            await sio.disconnect()
        result["events"] = events
        result["elapsed_s"] = round(time.monotonic() - started, 2)
        return result


async def _dismiss_dialogs(page: Any) -> None:
    """Close the first-visit "What's New" changelog modal (it covers the chat input)."""
    dialog = page.locator("div[role=dialog]")
    for _ in range(5):
        await page.wait_for_timeout(500)
        if not await dialog.count() or not await dialog.first.is_visible():
            return
        go = page.get_by_role("button", name="Okay, Let's Go!")
        if await go.count():
            await go.first.click()
        else:
            await page.keyboard.press("Escape")


async def browser(req: dict[str, Any]) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    base: str = req["base"]
    timeout_ms = int(float(req.get("timeout", 90)) * 1000)
    started = time.monotonic()
    async with async_playwright() as p:
        # A fresh profile directory per run (Playwright wants it as the persistent-context argument).
        context = await p.chromium.launch_persistent_context(
            req["user_data_dir"],
            executable_path=req.get("executable", "/usr/bin/chromium"),
            headless=True,
            viewport={"width": 1280, "height": 800},
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(f"{base}/?model={req['model']}", timeout=timeout_ms)
            chat_input = page.locator("#chat-input")
            await chat_input.wait_for(state="visible", timeout=timeout_ms)
            await _dismiss_dialogs(page)
            await chat_input.click()
            await page.keyboard.type(req["prompt"])
            await page.keyboard.press("Enter")
            expect = req["expect"]
            await page.wait_for_function(
                "text => document.body.innerText.includes(text)", arg=expect, timeout=timeout_ms
            )
            for text in req.get("also_wait_for", []):  # e.g. the follow-up suggestions
                with contextlib.suppress(Exception):  # nice to have in the screenshot, not required
                    await page.wait_for_function(
                        "text => document.body.innerText.includes(text)", arg=text, timeout=timeout_ms // 3
                    )
            await page.wait_for_timeout(int(req.get("settle_ms", 1500)))
            await page.screenshot(path=req["screenshot"], full_page=False)
            text = await page.evaluate("document.body.innerText")
            url = page.url
        finally:
            await context.close()
    return {"page_text": text, "url": url, "elapsed_s": round(time.monotonic() - started, 2)}


async def _page_shows(page: Any, text: str, timeout_ms: int) -> None:
    await page.wait_for_function(
        "text => document.body.innerText.includes(text)", arg=text, timeout=timeout_ms
    )


async def _follow(context: Any, page: Any, link: Any, timeout_ms: int) -> Any:
    """Click a chat link the way a user does: a `target=_blank` link opens a new tab."""
    if (await link.get_attribute("target")) == "_blank":
        async with context.expect_page(timeout=timeout_ms) as opened:
            await link.click()
        review = await opened.value
    else:
        await link.click()
        review = page
    await review.wait_for_load_state("domcontentloaded", timeout=timeout_ms)
    return review


async def _message_facts(message: Any) -> dict[str, Any]:
    """How Open WebUI rendered the assistant message: text, links, code blocks."""
    return await message.evaluate(
        """el => ({
            text: el.innerText,
            links: [...el.querySelectorAll('a')].map(a => ({text: a.innerText, href: a.href,
                                                            target: a.target})),
            code_blocks: [...el.querySelectorAll('pre, .cm-content')].map(c => c.innerText),
            bold: [...el.querySelectorAll('strong')].map(b => b.innerText),
        })"""
    )


async def approval(req: dict[str, Any]) -> dict[str, Any]:
    """One chat turn whose tool call asks a question, answered from the chat's links (or not).

    `action`: "allow" follows "Review and allow" and presses *Allow once*; "deny"
    follows "Deny" and presses *Deny*; "timeout" answers nothing. Then it waits on
    the chat page for `expect` (the decision line) and `expect_after` (the answer).
    """
    from playwright.async_api import async_playwright

    base: str = req["base"]
    action: str = req["action"]
    timeout_ms = int(float(req.get("timeout", 90)) * 1000)
    decided_within_ms = int(float(req.get("decided_within", 90)) * 1000)
    shots: dict[str, str] = req.get("screenshots", {})
    result: dict[str, Any] = {"action": action}
    started = time.monotonic()
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            req["user_data_dir"],
            executable_path=req.get("executable", "/usr/bin/chromium"),
            headless=True,
            viewport={"width": 1280, "height": int(req.get("viewport_height", 900))},
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(f"{base}/?model={req['model']}", timeout=timeout_ms)
            chat_input = page.locator("#chat-input")
            await chat_input.wait_for(state="visible", timeout=timeout_ms)
            await _dismiss_dialogs(page)
            if shots:  # the "You're now logged in." toast would cover the chat in the screenshots
                await page.add_style_tag(content="[data-sonner-toaster] { display: none !important; }")
            await chat_input.click()
            await page.keyboard.type(req["prompt"])
            await page.keyboard.press("Enter")
            # The question block, rendered live while the run waits for an answer.
            review_link = page.get_by_role("link", name="Review and allow")
            deny_link = page.get_by_role("link", name="Deny")
            await review_link.wait_for(state="visible", timeout=timeout_ms)
            await deny_link.wait_for(state="visible", timeout=timeout_ms)
            await _page_shows(page, req["command"], timeout_ms)
            message = page.locator("#response-content-container").last
            result["question"] = await _message_facts(message)
            result["question_seen_s"] = round(time.monotonic() - started, 2)
            if shots.get("question"):
                await message.scroll_into_view_if_needed()
                await page.screenshot(path=shots["question"], full_page=False)
            if action in ("allow", "deny"):
                link = review_link if action == "allow" else deny_link
                review = await _follow(context, page, link, timeout_ms)
                button_name = "Allow once" if action == "allow" else "Deny"
                button = review.get_by_role("button", name=button_name, exact=True)
                await button.wait_for(state="visible", timeout=timeout_ms)
                result["review_url"] = review.url
                result["review_text"] = await review.evaluate("document.body.innerText")
                result["review_focused"] = await review.evaluate(
                    "document.activeElement && document.activeElement.innerText"
                )
                if shots.get("review"):
                    await review.screenshot(path=shots["review"], full_page=True)
                await button.click()
                await _page_shows(review, "Decided", timeout_ms)
                result["review_after"] = await review.evaluate("document.body.innerText")
                await page.bring_to_front()
            # Back in the chat: the decision line, then the rest of the answer.
            await _page_shows(page, req["expect"], decided_within_ms)
            for text in req.get("expect_after", []):
                await _page_shows(page, text, timeout_ms)
            # The turn is over once Open WebUI shows the message's action buttons again.
            await page.locator("button[aria-label='Copy']").last.wait_for(state="visible", timeout=timeout_ms)
            message = page.locator("#response-content-container").last
            result["answer"] = await _message_facts(message)
            if shots.get("answer"):
                await message.scroll_into_view_if_needed()
                await page.screenshot(path=shots["answer"], full_page=False)
            result["url"] = page.url
        finally:
            await context.close()
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    return result


async def _answered(page: Any, text: str, timeout_ms: int) -> None:
    """The assistant message shows `text` and the turn is over (its action buttons are back)."""
    await _page_shows(page, text, timeout_ms)
    await page.locator("button[aria-label='Regenerate']").last.wait_for(state="visible", timeout=timeout_ms)


async def _shot(page: Any, shots: dict[str, str], name: str) -> None:
    if shots.get(name):
        await page.screenshot(path=shots[name], full_page=False)


async def regenerate_and_edit(req: dict[str, Any]) -> dict[str, Any]:
    """Send a prompt, press *Regenerate* → *Try Again* on the answer, then edit the user message.

    Each step waits for its expected answer text (`expect`: first, regenerated,
    edited) and for the message's action buttons, which come back when the turn
    is over. It reports the chat URL and the page text after each step.
    """
    from playwright.async_api import async_playwright

    base: str = req["base"]
    timeout_ms = int(float(req.get("timeout", 90)) * 1000)
    expect: dict[str, str] = req["expect"]
    shots: dict[str, str] = req.get("screenshots", {})
    result: dict[str, Any] = {}
    started = time.monotonic()
    async with async_playwright() as p:
        context = await p.chromium.launch_persistent_context(
            req["user_data_dir"],
            executable_path=req.get("executable", "/usr/bin/chromium"),
            headless=True,
            viewport={"width": 1280, "height": 900},
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(f"{base}/?model={req['model']}", timeout=timeout_ms)
            chat_input = page.locator("#chat-input")
            await chat_input.wait_for(state="visible", timeout=timeout_ms)
            await _dismiss_dialogs(page)
            await page.add_style_tag(content="[data-sonner-toaster] { display: none !important; }")
            await chat_input.click()
            await page.keyboard.type(req["prompt"])
            await page.keyboard.press("Enter")
            await _answered(page, expect["first"], timeout_ms)
            await page.wait_for_url("**/c/*", timeout=timeout_ms)
            result["url"] = page.url
            await _shot(page, shots, "first")
            # Regenerate: the answer's button opens Open WebUI's regenerate menu; "Try Again".
            await page.locator("button[aria-label='Regenerate']").last.click()
            try_again = page.get_by_role("button", name="Try Again")
            await try_again.wait_for(state="visible", timeout=timeout_ms)
            await try_again.click()
            await _answered(page, expect["regenerated"], timeout_ms)
            result["after_regenerate"] = await page.evaluate("document.body.innerText")
            await _shot(page, shots, "regenerated")
            # Edit the first (only) user message and send it.
            user_message = page.locator(".user-message").first
            await user_message.hover()
            await user_message.locator("button.edit-user-message-button").click()
            editor = page.locator("textarea[id^='message-edit-']")
            await editor.wait_for(state="visible", timeout=timeout_ms)
            await editor.fill(req["edited_prompt"])
            await page.locator("#confirm-edit-message-button").click()
            await _answered(page, expect["edited"], timeout_ms)
            result["after_edit"] = await page.evaluate("document.body.innerText")
            await _shot(page, shots, "edited")
            result["final_url"] = page.url
        except Exception:
            if req.get("failure_screenshot"):
                with contextlib.suppress(Exception):
                    await page.screenshot(path=req["failure_screenshot"], full_page=False)
            raise
        finally:
            await context.close()
    result["elapsed_s"] = round(time.monotonic() - started, 2)
    return result


def main() -> None:
    command = sys.argv[1]
    req = json.loads(sys.stdin.read())
    handler = {
        "turn": turn,
        "browser": browser,
        "approval": approval,
        "regenerate_and_edit": regenerate_and_edit,
    }[command]
    print(json.dumps(asyncio.run(handler(req))))


if __name__ == "__main__":
    main()
