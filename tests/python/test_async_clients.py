"""The SDKs' async clients (httpx async transport) against the gateway: sync-style calls and
streams, concurrently, through both endpoints."""

from __future__ import annotations

import asyncio

import anthropic
import openai


def test_async_clients_concurrently(gateway, nonce):
    async def run() -> None:
        oai = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.token, max_retries=0, timeout=30)
        ant = anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.token, max_retries=0, timeout=30)

        async def oai_sync(model: str, i: int) -> None:
            r = await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": f"{nonce} o{i}"}])
            assert r.choices[0].message.content == f"echo: {nonce} o{i}"

        async def oai_stream(model: str, i: int) -> None:
            stream = await oai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{nonce} os{i}"}], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == f"echo: {nonce} os{i}"

        async def ant_stream(model: str, i: int) -> None:
            async with ant.messages.stream(
                model=model, max_tokens=64, messages=[{"role": "user", "content": f"{nonce} as{i}"}]
            ) as s:
                text = "".join([t async for t in s.text_stream])
                final = await s.get_final_message()
            assert text == f"echo: {nonce} as{i}"
            assert final.usage.output_tokens > 0

        jobs = []
        for i, model in enumerate(["gpt-5", "haiku"] * 4):
            jobs += [oai_sync(model, i), oai_stream(model, i), ant_stream(model, i)]
        await asyncio.wait_for(asyncio.gather(*jobs), timeout=60)
        await oai.close()
        await ant.close()

    asyncio.run(run())
