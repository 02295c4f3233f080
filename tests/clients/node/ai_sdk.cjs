// The Vercel AI SDK (`ai` + `@ai-sdk/openai`, pinned in tests/clients/package-lock.json) with
// its default OpenAI provider, `openai(model)`, which speaks the Responses API.
'use strict';

const { generateText, streamText, tool, jsonSchema, stepCountIs } = require('ai');
const { createOpenAI } = require('@ai-sdk/openai');
const { input, run, WEATHER_PARAMETERS } = require('./common.cjs');

const provider = () => createOpenAI({ baseURL: `${input.baseUrl()}/v1`, apiKey: input.token() });

const weather = tool({
  description: 'Current weather for a city',
  inputSchema: jsonSchema(WEATHER_PARAMETERS),
  execute: async ({ city }) => `sunny in ${city}`,
});

run({
  async generate_text() {
    const r = await generateText({ model: provider()(input.model()), prompt: `hello ${input.nonce()}`, maxRetries: 0 });
    return { text: r.text, finishReason: r.finishReason, usage: r.usage, steps: r.steps.length };
  },

  // Two steps: the model calls get_weather, the SDK runs it and sends the result back.
  async generate_tool() {
    const r = await generateText({
      model: provider()(input.model()),
      prompt: `weather please ${input.nonce()} [tool:get_weather]`,
      tools: { get_weather: weather },
      stopWhen: stepCountIs(3),
      maxRetries: 0,
    });
    return {
      text: r.text,
      finishReason: r.finishReason,
      steps: r.steps.map((s) => ({
        finishReason: s.finishReason,
        toolCalls: s.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })),
        toolResults: s.toolResults.map((t) => t.output),
      })),
      usage: r.totalUsage,
    };
  },

  async stream_text() {
    const r = streamText({ model: provider()(input.model()), prompt: `hello ${input.nonce()}`, maxRetries: 0 });
    let text = '';
    for await (const delta of r.textStream) text += delta;
    return { text, finishReason: await r.finishReason, usage: await r.usage };
  },
});
