// The `@anthropic-ai/sdk` npm package (pinned in tests/clients/package-lock.json) against the
// gateway: messages.countTokens and models.list (Anthropic shape).
'use strict';

const Anthropic = require('@anthropic-ai/sdk');
const { input, run, WEATHER_PARAMETERS } = require('./common.cjs');

const client = () => new Anthropic({ baseURL: input.baseUrl(), apiKey: input.token(), maxRetries: 0, timeout: 30000 });

run({
  async count_tokens() {
    const { data, response } = await client()
      .messages.countTokens({
        model: input.model(),
        system: 'be brief',
        messages: [{ role: 'user', content: `hello ${input.nonce()}` }],
        tools: [{ name: 'get_weather', description: 'Current weather for a city', input_schema: WEATHER_PARAMETERS }],
      })
      .withResponse();
    return { data, status: response.status, headers: Object.fromEntries(response.headers.entries()) };
  },

  async models_list() {
    const page = await client().models.list({ limit: 1000 });
    const data = [];
    for await (const m of page) data.push(m);
    const retrieved = await client().models.retrieve(input.model());
    return { data, first_page: { has_more: page.has_more, first_id: page.first_id, last_id: page.last_id }, retrieved };
  },
});
