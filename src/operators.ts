/**
 * `dualstream/operators`: the FGRPO pipeline as RxJS operators (validate, deduplicate, group,
 * window, measure, dual ascent, advantages; `fgrpo` composes them), and `scoreRollouts` to fill
 * a reward channel from a model. Loads RxJS and nothing heavier.
 *
 * @example
 * import { fgrpo } from 'dualstream/operators'
 * rollouts$.pipe(fgrpo(config)).subscribe((batch) => trainer.step(batch))
 */
export * from '../operators/index.js'
