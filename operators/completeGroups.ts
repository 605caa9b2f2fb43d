import { asyncScheduler, type Observable, type OperatorFunction, type SchedulerLike } from 'rxjs'
import type { DropEvent, Group, Rollout } from '../src/core/types.js'
import { operate, subscribeUpstream } from './internal/operate.js'

export interface CompleteGroupsOptions {
  /** Rollouts per prompt; a rollout's own `groupSize` (from the first of its group) wins. */
  groupSize: number
  /** A group cut short by its timeout or by the end of input is emitted if it has at least this many rollouts, else dropped (default 2). */
  minGroupSize?: number
  /** Event-time timeout counted from a group's first rollout (default: none). */
  timeoutMs?: number
  /** Event time of a rollout (default: its `ts`, else the scheduler's clock). */
  eventTime?: (rollout: Rollout) => number
  /** Watermarks: event times that advance the clock while no rollout arrives. */
  watermarks?: Observable<number>
  /** Clock for rollouts without `ts`; inject a TestScheduler for virtual time. */
  scheduler?: SchedulerLike
  /** Told of every group dropped for being too small. */
  onDrop?: (event: DropEvent) => void
}

/**
 * Collects rollouts into groups by `promptId` and emits each group when it has `groupSize`
 * rollouts, or when its event-time timeout expires (as partial, if it has `minGroupSize`).
 *
 * Time is event time: a rollout's `ts`, with late ones counted as arriving at the watermark
 * (the largest time seen), so replaying a log gives the same groups as the live run. Groups
 * live in a Map and are deleted on emission — never RxJS `groupBy`, which keeps one subject
 * per prompt forever. At the end of input the pending groups are emitted as partial or dropped.
 *
 * @example
 * rollouts$.pipe(completeGroups({ groupSize: 8, timeoutMs: 30_000, onDrop: (e) => (dropped += e.count) }))
 */
export function completeGroups<P>(options: CompleteGroupsOptions): OperatorFunction<Rollout<P>, Group<P>> {
  const { groupSize, minGroupSize = Math.min(2, groupSize), timeoutMs = Infinity, scheduler = asyncScheduler } = options
  const eventTime = options.eventTime ?? ((rollout: Rollout) => rollout.ts ?? scheduler.now())
  return operate((source, subscriber) => {
    // pending groups by prompt, in order of their first rollout, hence of their deadlines
    const pending = new Map<string, { rollouts: Rollout<P>[]; expected: number; deadline: number }>()
    // the largest event time seen: the clock every timeout is measured on
    let watermark = -Infinity

    const release = (promptId: string, rollouts: Rollout<P>[], partial: boolean, expected = groupSize) => {
      if (!partial || rollouts.length >= minGroupSize) {
        subscriber.next({ promptId, rollouts, partial, ts: watermark })
        return
      }
      options.onDrop?.({
        reason: 'incomplete-group',
        rollouts,
        count: rollouts.length,
        promptId,
        detail: `group "${promptId}" had ${rollouts.length} of ${expected} rollouts when cut short (minGroupSize ${minGroupSize})`,
      })
    }
    const advance = (time: number) => {
      if (!(time > watermark)) return
      watermark = time
      // deadlines grow with insertion order, so the expired groups are a prefix of the Map
      for (const [promptId, group] of pending) {
        if (group.deadline > watermark) break
        pending.delete(promptId)
        release(promptId, group.rollouts, true, group.expected)
      }
    }

    subscribeUpstream(source, subscriber, {
      next: (rollout) => {
        advance(eventTime(rollout))
        const group = pending.get(rollout.promptId)
        if (group !== undefined) {
          group.rollouts.push(rollout)
          if (group.rollouts.length < group.expected) return
          pending.delete(rollout.promptId)
          release(rollout.promptId, group.rollouts, false)
          return
        }
        const expected = rollout.groupSize ?? groupSize
        if (expected <= 1) release(rollout.promptId, [rollout], false)
        else pending.set(rollout.promptId, { rollouts: [rollout], expected, deadline: watermark + timeoutMs })
      },
      complete: () => {
        // end of input: nothing more will arrive for the pending groups
        for (const [promptId, group] of pending) release(promptId, group.rollouts, true, group.expected)
        pending.clear()
        subscriber.complete()
      },
      finalize: () => pending.clear(),
    })
    if (options.watermarks !== undefined) subscribeUpstream(options.watermarks, subscriber, { next: advance, complete: () => {} })
  })
}
