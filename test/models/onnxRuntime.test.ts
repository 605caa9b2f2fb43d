/**
 * onnxruntime-node is an optional peer dependency, loaded on first use: a missing package is
 * reported with what to install, any other failure as it came.
 */
import t from 'tap'
import { loadOnnxRuntime, type OnnxRuntime } from '../../src/models/onnxRuntime.js'

const notFound = (name: string) =>
  Object.assign(new Error(`Cannot find package '${name}' imported from /somewhere/dist/src/models/onnxRuntime.js`), { code: 'ERR_MODULE_NOT_FOUND' })

t.test('loads onnxruntime-node when it is installed', async (t) => {
  const ort = await loadOnnxRuntime('a test')
  t.type(ort.InferenceSession.create, 'function')
  t.type(ort.Tensor, 'function')
})

t.test('a missing onnxruntime-node: the error says what to install', async (t) => {
  const missing = notFound('onnxruntime-node')
  await t.rejects(
    loadOnnxRuntime('loadOnnxScorer', () => Promise.reject(missing)),
    { message: 'loadOnnxScorer needs the optional package onnxruntime-node: npm install onnxruntime-node', cause: missing },
  )
})

t.test('other failures come as they are', async (t) => {
  const brokenInstall = notFound('onnxruntime-common')
  await t.rejects(
    loadOnnxRuntime('OnnxPolicy', () => Promise.reject(brokenInstall)),
    brokenInstall,
    'a dependency of it missing',
  )
  const badBinary = new Error('libonnxruntime.so.1: cannot open shared object file')
  await t.rejects(
    loadOnnxRuntime('OnnxPolicy', () => Promise.reject(badBinary)),
    badBinary,
    'a native binary that does not load',
  )
  const fake = {} as OnnxRuntime
  t.equal(await loadOnnxRuntime('OnnxPolicy', () => Promise.resolve(fake)), fake)
})
