// The `openai` npm package (pinned in tests/clients/package-lock.json) against the gateway:
// responses.create (sync, streamed, with a function tool and its output sent back),
// embeddings.create and models.list.
'use strict';

const OpenAI = require('openai');
const { input, run, WEATHER_PARAMETERS } = require('./common.cjs');

const client = () =>
  new OpenAI({ baseURL: `${input.baseUrl()}/v1`, apiKey: input.token(), maxRetries: 0, timeout: 30000 });

const TOOLS = [
  { type: 'function', name: 'get_weather', description: 'Current weather for a city', parameters: WEATHER_PARAMETERS, strict: true },
];

function summary(resp) {
  return {
    id: resp.id,
    object: resp.object,
    status: resp.status,
    model: resp.model,
    output: resp.output,
    output_text: resp.output_text,
    usage: resp.usage,
  };
}

run({
  // Turn 1 asks for the tool (the fake's [tool:get_weather] directive); turn 2 sends the call and
  // its output back statelessly (store: false, full input) and gets the final text.
  async responses_tool_loop() {
    const c = client();
    const prompt = `weather please ${input.nonce()} [tool:get_weather]`;
    const first = await c.responses.create({ model: input.model(), input: prompt, tools: TOOLS, store: false });
    const call = first.output.find((o) => o.type === 'function_call');
    if (!call) return { first: summary(first), second: null };
    const second = await c.responses.create({
      model: input.model(),
      store: false,
      tools: TOOLS,
      input: [
        { role: 'user', content: prompt },
        call,
        { type: 'function_call_output', call_id: call.call_id, output: 'sunny, 21 C' },
      ],
    });
    return { first: summary(first), second: summary(second) };
  },

  async responses_text() {
    const resp = await client().responses.create({
      model: input.model(),
      instructions: 'be brief',
      input: `hello ${input.nonce()}`,
      max_output_tokens: 200,
    });
    return summary(resp);
  },

  // Streamed, with the tool: every event type in order, the argument deltas and the final
  // response of response.completed.
  async responses_stream_tool() {
    const stream = await client().responses.create({
      model: input.model(),
      input: `weather please ${input.nonce()} [tool:get_weather]`,
      tools: TOOLS,
      stream: true,
    });
    const types = [];
    let args = '';
    let completed = null;
    let sequence = [];
    for await (const ev of stream) {
      types.push(ev.type);
      sequence.push(ev.sequence_number);
      if (ev.type === 'response.function_call_arguments.delta') args += ev.delta;
      if (ev.type === 'response.completed') completed = summary(ev.response);
    }
    return { types, sequence, args, completed };
  },

  async responses_stream_text() {
    const stream = await client().responses.create({ model: input.model(), input: `hello ${input.nonce()}`, stream: true });
    const types = [];
    let text = '';
    let completed = null;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') completed = summary(ev.response);
    }
    return { types, text, completed };
  },

  async embeddings() {
    const resp = await client().embeddings.create({ model: input.model(), input: ['alpha', `beta ${input.nonce()}`] });
    return {
      object: resp.object,
      model: resp.model,
      count: resp.data.length,
      indexes: resp.data.map((d) => d.index),
      dims: resp.data.map((d) => d.embedding.length),
      first: resp.data[0].embedding.slice(0, 4),
      usage: resp.usage,
    };
  },

  async models_list() {
    const ids = [];
    let sample = null;
    for await (const m of client().models.list()) {
      ids.push(m.id);
      if (m.id === input.model()) sample = m;
    }
    const retrieved = await client().models.retrieve(input.model());
    return { ids, sample, retrieved };
  },
});
