/**
 * Shows a bad value the way a user would recognise it in their producer: a number as itself,
 * a string quoted (cut at 40 characters), and the MessagePack types that arrive as JavaScript
 * objects by their MessagePack name (a timestamp, binary data, a map), not as "object".
 */
export function describe(value: unknown): string {
  if (typeof value === 'number') return String(value)
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)}`
  if (typeof value === 'boolean') return `the boolean ${value}`
  if (typeof value === 'bigint') return `the integer ${value} (beyond ±2^53)`
  if (value === undefined) return 'nothing'
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (value instanceof Date) {
    const time = value.getTime()
    return `a timestamp (MessagePack ext −1${Number.isFinite(time) ? `: ${value.toISOString()}` : ''})`
  }
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return `binary data (MessagePack bin, ${value.byteLength} bytes)`
  if (typeof value === 'object') return 'a map'
  return typeof value
}
