/**
 * The MessagePack codec of the wire and of the frames the engine logs as they arrived:
 * plain maps (msgpackr with `useRecords: false`, so any MessagePack implementation can talk
 * to it), 64-bit integers as numbers. One definition, so a logged frame decodes at restart
 * exactly as it did at ingest.
 */
import { Packr, Unpackr } from 'msgpackr'

/** How a frame is encoded: MessagePack (binary frames) or JSON (text frames). */
export type WireFormat = 'msgpack' | 'json'

export const wirePackr = new Packr({ useRecords: false })
// 64-bit integers become numbers (never BigInt, which JSON and most consumers cannot take)
export const wireUnpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' })
