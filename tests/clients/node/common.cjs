// Shared by the SDK scripts: the case's inputs come from the environment (set by
// tests/clients/test_sdks.py), the result is one JSON line on stdout.
'use strict';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

const input = {
  baseUrl: () => env('GATEWAY_URL'),
  token: () => env('GATEWAY_TOKEN'),
  model: () => env('MODEL'),
  nonce: () => env('NONCE'),
};

const WEATHER_PARAMETERS = {
  type: 'object',
  properties: { city: { type: 'string' } },
  required: ['city'],
  additionalProperties: false,
};

async function main(cases) {
  const name = process.argv[2];
  const fn = cases[name];
  if (!fn) throw new Error(`unknown case ${name}; known: ${Object.keys(cases).join(', ')}`);
  const result = await fn();
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function run(cases) {
  main(cases).catch((err) => {
    // The SDK's error carries the status and body the gateway answered: print them.
    console.error(err && err.stack ? err.stack : err);
    if (err && err.status) console.error(`status ${err.status}: ${JSON.stringify(err.error || err.body || null)}`);
    process.exit(1);
  });
}

module.exports = { input, run, WEATHER_PARAMETERS };
