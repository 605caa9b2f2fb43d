/**
 * Virtual time for tests of code that takes an RxJS scheduler for its clock and timers
 * (the engine's watermarks, the servers' heartbeats, progress lines): `advance(ms)` runs
 * every action due by then, in time order, and moves `now()` there. No test waits on the
 * wall clock to see whether a timer fired.
 */
import { VirtualAction, VirtualTimeScheduler } from 'rxjs'

export class VirtualClock extends VirtualTimeScheduler {
  constructor(start = 0) {
    super(VirtualAction, Infinity)
    this.frame = start
  }

  /** Runs the actions due within `ms` from now (periodic ones as often as they fall due) and moves the clock by `ms`. */
  advance(ms: number): void {
    const target = this.frame + ms
    this.maxFrames = target
    this.flush()
    this.frame = target
    this.maxFrames = Infinity
  }
}
