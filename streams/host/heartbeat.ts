/**
 * The host's ping/pong heartbeat, on an RxJS scheduler (ARCHITECTURE.md §4: `asyncScheduler`
 * in a server, a virtual clock in tests): every period each socket is pinged, and one that
 * has not answered the previous ping is terminated — unless the host stopped reading it
 * (flow control), in which case its pong cannot have been read and it is not to blame.
 */
import { Subscription, type SchedulerAction, type SchedulerLike } from 'rxjs'
import type { WebSocket } from 'ws'

/**
 * @example
 * const heartbeat = new Heartbeat(sockets, 30_000, asyncScheduler)
 * heartbeat.watch(ws) // on each new connection
 * heartbeat.start()   // once listening
 * heartbeat.stop()    // on close
 */
export class Heartbeat {
  // pinged and not answered yet
  private readonly awaitingPong = new WeakSet<WebSocket>()
  private beating: Subscription | undefined

  constructor(
    private readonly sockets: ReadonlySet<WebSocket>,
    private readonly periodMs: number,
    private readonly scheduler: SchedulerLike,
  ) {}

  /** Counts the pongs of a new connection as answers. */
  watch(ws: WebSocket): void {
    ws.on('pong', () => this.awaitingPong.delete(ws))
  }

  /** Starts beating (a no-op with a period of 0, when already started, or once stopped). */
  start(): void {
    const period = this.periodMs
    if (period <= 0 || this.beating !== undefined) return
    const beat = () => this.beat()
    this.beating = this.scheduler.schedule(function (this: SchedulerAction<void>) {
      beat()
      this.schedule(undefined, period)
    }, period)
  }

  /** Stops for good. */
  stop(): void {
    this.beating?.unsubscribe()
    this.beating = Subscription.EMPTY
  }

  private beat(): void {
    for (const ws of this.sockets) {
      if (this.awaitingPong.has(ws) && !ws.isPaused) {
        ws.terminate()
        continue
      }
      this.awaitingPong.add(ws)
      ws.ping()
    }
  }
}
