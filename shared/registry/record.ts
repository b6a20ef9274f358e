import { createHash } from 'node:crypto'
import { z } from 'zod'

export const SERVICE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/

export const serviceNameSchema = z.string().regex(SERVICE_NAME, 'service names match ^[a-z0-9][a-z0-9-]{0,62}$')

const rttSchema = z.number().int().min(0).max(60_000)

/** How a service runs. Exactly one of `image` (docker runtime) and `command` (process runtime). */
export const recordSchema = z.strictObject({
  name: serviceNameSchema,
  image: z.string().min(1).max(512).optional(),
  command: z.string().min(1).max(4096).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'env names are shell identifiers'), z.string().max(8192)).optional(),
  health: z.string().startsWith('/').max(1024).default('/'),
  softRttMs: rttSchema.optional(),
  hardRttMs: rttSchema.optional(),
  cpu: z.number().positive().max(1024).optional(),
  memoryMb: z.number().int().positive().max(1_048_576).optional(),
  targetRps: z.number().positive().optional(),
  minInstances: z.number().int().min(0).max(1000).optional(),
  maxInstances: z.number().int().min(1).max(100_000).optional(),
  seq: z.number().int().min(0).default(0)
}).superRefine((rec, ctx) => {
  if ((rec.image == null) === (rec.command == null)) {
    ctx.addIssue({ code: 'custom', message: 'a record needs exactly one of image and command' })
  }
  if (rec.softRttMs != null && rec.hardRttMs != null && rec.softRttMs > rec.hardRttMs) {
    ctx.addIssue({ code: 'custom', message: 'softRttMs must not exceed hardRttMs' })
  }
  if (rec.minInstances != null && rec.maxInstances != null && rec.minInstances > rec.maxInstances) {
    ctx.addIssue({ code: 'custom', message: 'minInstances must not exceed maxInstances' })
  }
})

export type ServiceRecord = z.output<typeof recordSchema>
export type ServiceRecordInput = z.input<typeof recordSchema>

/** One line naming every problem, for CLI errors and coded protocol errors. */
export function describeIssues (error: z.ZodError): string {
  return error.issues.map(issue => {
    const path = issue.path.join('.')
    // zod reports a bad record key as "Invalid key in record"; the reason is in the nested issues.
    const message = issue.code === 'invalid_key' && issue.issues.length > 0
      ? `invalid key: ${issue.issues.map(inner => inner.message).join('; ')}`
      : issue.message
    return path === '' ? message : `${path}: ${message}`
  }).join('; ')
}

export function parseRecord (input: unknown): ServiceRecord {
  const parsed = recordSchema.safeParse(input)
  if (!parsed.success) throw new InvalidRecordError(describeIssues(parsed.error))
  return parsed.data
}

export class InvalidRecordError extends Error {
  override name = 'InvalidRecordError'
}

/** JSON with sorted keys at every level, so that signatures and digests do not depend on key order. */
export function canonicalJson (value: unknown): string {
  return JSON.stringify(sortKeys(value))
}

function sortKeys (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys)
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key]
      if (v !== undefined) out[key] = sortKeys(v)
    }
    return out
  }
  return value
}

/**
 * The digest of what decides how an instance runs. Instances advertise under a CID that
 * includes it, so a changed image, command, port or env routes to new instances only.
 */
export function runDigest (record: ServiceRecord): string {
  const runFields = { image: record.image, command: record.command, port: record.port, env: record.env }
  return createHash('sha256').update(canonicalJson(runFields)).digest('hex').slice(0, 32)
}
