"""openai-agents and pydantic-ai (pinned in tests/clients/requirements.txt) against the gateway,
each with its default Responses-API model class and one function tool. Run by
tests/clients/test_sdks.py in a scratch environment: `python python_agents.py CASE`; inputs
from the environment, one JSON line on stdout."""

from __future__ import annotations

import asyncio
import json
import os
import sys


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set")
    return value


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def openai_agents() -> dict:
    from agents import Agent, Runner, function_tool, set_default_openai_client, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    set_default_openai_client(
        AsyncOpenAI(base_url=f"{env('GATEWAY_URL')}/v1", api_key=env("GATEWAY_TOKEN"), max_retries=0, timeout=30),
        use_for_tracing=False,
    )
    # No model class named: the default provider's default, OpenAIResponsesModel.
    agent = Agent(
        name="weather",
        instructions="Answer with the tool's result.",
        model=env("MODEL"),
        tools=[function_tool(get_weather)],
    )
    result = asyncio.run(Runner.run(agent, f"weather please {env('NONCE')} [tool:get_weather]", max_turns=4))
    return {
        "final_output": result.final_output,
        "model_class": type(agent.model).__name__ if not isinstance(agent.model, str) else "default",
        "items": [type(i).__name__ for i in result.new_items],
        "responses": len(result.raw_responses),
    }


def pydantic_ai() -> dict:
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    # An explicit client only to switch the SDK's own retries off (it would retry a 5xx twice).
    openai_client = AsyncOpenAI(
        base_url=f"{env('GATEWAY_URL')}/v1", api_key=env("GATEWAY_TOKEN"), max_retries=0, timeout=30
    )
    model = OpenAIResponsesModel(env("MODEL"), provider=OpenAIProvider(openai_client=openai_client))
    agent = Agent(model, tools=[get_weather], retries=0)
    result = agent.run_sync(f"weather please {env('NONCE')} [tool:get_weather]")
    return {
        "output": result.output,
        "messages": [m.kind for m in result.all_messages()],
        "usage": {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens},
    }


CASES = {"openai_agents": openai_agents, "pydantic_ai": pydantic_ai}

if __name__ == "__main__":
    print(json.dumps(CASES[sys.argv[1]]()))
