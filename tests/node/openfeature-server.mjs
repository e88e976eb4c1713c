// Evaluates flags through the official OpenFeature server SDK (@openfeature/server-sdk) on its OFREP
// provider (@openfeature/ofrep-provider), configured as docs/flags.md shows, and prints each
// evaluation's details as one JSON line on stdout.
//
// stdin: {"baseUrl": "http://127.0.0.1:PORT", "token": "...", "context": {...},
//         "evaluations": [{"type": "boolean|string|number|object", "key": "...", "default": ...}]}
// stdout: {"results": [{"value", "reason", "variant", "errorCode", "flagMetadata"}]}
import { OpenFeature } from '@openfeature/server-sdk'
import { OFREPProvider } from '@openfeature/ofrep-provider'

const readStdin = async () => {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

const spec = await readStdin()
await OpenFeature.setProviderAndWait(
  new OFREPProvider({
    baseUrl: spec.baseUrl,
    headers: [['Authorization', `Bearer ${spec.token}`]],
  }),
)
const client = OpenFeature.getClient()
const details = {
  boolean: (key, fallback, context) => client.getBooleanDetails(key, fallback, context),
  string: (key, fallback, context) => client.getStringDetails(key, fallback, context),
  number: (key, fallback, context) => client.getNumberDetails(key, fallback, context),
  object: (key, fallback, context) => client.getObjectDetails(key, fallback, context),
}
const results = []
for (const { type, key, default: fallback } of spec.evaluations) {
  const answer = await details[type](key, fallback, spec.context)
  results.push({
    value: answer.value,
    reason: answer.reason,
    variant: answer.variant ?? null,
    errorCode: answer.errorCode ?? null,
    flagMetadata: answer.flagMetadata,
  })
}
await OpenFeature.close()
process.stdout.write(JSON.stringify({ results }) + '\n')
