/**
 * `dualstream/client`: a trainer for a running `dualstream serve`, in TypeScript (the Python
 * package `dualstream_client` in examples/python is the same for Python trainers). Loads ws
 * and msgpackr, not the engine.
 *
 * @example
 * import { TrainerClient } from 'dualstream/client'
 * const trainer = await TrainerClient.open({ url: 'ws://127.0.0.1:8787', statePath: 'trainer.json', rank: 0, world: 2 })
 * for await (const batch of trainer) await batch.ack({ policyVersion: await update(batch) })
 */
export {
  TrainerClient,
  TrainerClientError,
  type BatchShard,
  type TrainerBatch,
  type TrainerClientOptions,
  type TrainerRollout,
} from '../streams/trainerClient.js'
