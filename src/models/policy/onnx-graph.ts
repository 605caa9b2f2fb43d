/**
 * A small typed layer over the ONNX protobuf schema (onnx-proto) so graphs built in code read
 * like the maths: `g.node('MatMul', [x, w])` returns the output name to feed the next node.
 */
import onnxProto from 'onnx-proto'

export const { onnx } = onnxProto
type IModelProto = onnxProto.onnx.IModelProto
type INodeProto = onnxProto.onnx.INodeProto
type ITensorProto = onnxProto.onnx.ITensorProto
type IValueInfoProto = onnxProto.onnx.IValueInfoProto
type IAttributeProto = onnxProto.onnx.IAttributeProto

/** Default opset: 17 (ReduceSum/Unsqueeze take axes as inputs; LogSoftmax works on one axis). */
export const DEFAULT_OPSET = 17
/** IR version 8 matches opset 17 and the onnx-proto schema (ONNX 1.10+). */
const IR_VERSION = 8

export type ElemType = 'float32' | 'int64' | 'bool'
const ELEM: Record<ElemType, number> = {
  float32: onnx.TensorProto.DataType.FLOAT,
  int64: onnx.TensorProto.DataType.INT64,
  bool: onnx.TensorProto.DataType.BOOL,
}

/** A dimension: a fixed size, or a symbolic name such as 'rows'. */
export type Dim = number | string

/** Marks a float attribute (plain numbers are INT attributes, number[] are INTS). */
export interface FloatAttr {
  readonly float: number
}
export const float = (value: number): FloatAttr => ({ float: value })
export type AttrValue = number | number[] | string | FloatAttr

function attribute(name: string, value: AttrValue): IAttributeProto {
  const T = onnx.AttributeProto.AttributeType
  if (typeof value === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(value) }
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value }
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new Error(`attribute ${name}: ${value} is not an integer; wrap floats with float()`)
    return { name, type: T.INT, i: value }
  }
  return { name, type: T.FLOAT, f: value.float }
}

function valueInfo(name: string, elem: ElemType, dims: readonly Dim[]): IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ELEM[elem],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  }
}

export type TensorData = Float32Array | BigInt64Array

function tensorProto(name: string, data: TensorData, dims: readonly number[]): ITensorProto {
  const size = dims.reduce((a, b) => a * b, 1)
  if (size !== data.length) throw new Error(`tensor ${name}: dims [${dims.join(', ')}] hold ${size} values but data has ${data.length}`)
  return {
    name,
    dims: [...dims],
    dataType: data instanceof Float32Array ? ELEM.float32 : ELEM.int64,
    // raw little-endian bytes (Node runs on little-endian hosts); copied so later edits of `data` don't leak in
    rawData: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)),
  }
}

export class GraphBuilder {
  private readonly nodes: INodeProto[] = []
  private readonly inputs: IValueInfoProto[] = []
  private readonly outputs: IValueInfoProto[] = []
  private readonly initializers: ITensorProto[] = []
  private readonly names = new Set<string>()
  private counter = 0

  constructor(readonly name: string) {}

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`graph ${this.name}: value name '${name}' is already defined`)
    this.names.add(name)
    return name
  }

  /** An unused value name derived from the op (not yet claimed). */
  private fresh(op: string): string {
    let name: string
    do name = `${op.toLowerCase()}_${this.counter++}`
    while (this.names.has(name))
    return name
  }

  input(name: string, elem: ElemType, dims: readonly Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), elem, dims))
    return name
  }

  /** Declare `value` (an existing value name) as a graph output under its own name. */
  output(value: string, elem: ElemType, dims: readonly Dim[]): string {
    if (!this.names.has(value)) throw new Error(`graph ${this.name}: output '${value}' is not a defined value`)
    this.outputs.push(valueInfo(value, elem, dims))
    return value
  }

  initializer(name: string, data: TensorData, dims: readonly number[]): string {
    this.initializers.push(tensorProto(this.claim(name), data, dims))
    return name
  }

  /** A float32 constant (scalar when dims is empty). */
  constant(values: number | readonly number[], dims: readonly number[] = []): string {
    const data = Float32Array.from(typeof values === 'number' ? [values] : values)
    return this.initializer(this.fresh('const'), data, dims)
  }

  /** An int64 1-D constant, e.g. the axes input of ReduceSum/Unsqueeze. */
  int64s(values: readonly number[]): string {
    return this.initializer(this.fresh('ints'), BigInt64Array.from(values.map(BigInt)), [values.length])
  }

  /** Add a node with one output and return the output's name (`as` names it explicitly). */
  node(op: string, inputs: readonly string[], attrs: Record<string, AttrValue> = {}, as?: string): string {
    for (const i of inputs) if (i !== '' && !this.names.has(i)) throw new Error(`graph ${this.name}: ${op} input '${i}' is not defined yet`)
    const out = this.claim(as ?? this.fresh(op))
    this.nodes.push({
      opType: op,
      name: `${op}:${out}`,
      input: [...inputs],
      output: [out],
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    })
    return out
  }

  /** Rename a value into a graph output name (Identity), e.g. to expose `grad_W0`. */
  alias(value: string, as: string): string {
    return this.node('Identity', [value], {}, as)
  }

  build(opset = DEFAULT_OPSET): IModelProto {
    return {
      irVersion: IR_VERSION,
      producerName: 'dualstream',
      opsetImport: [{ domain: '', version: opset }],
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      },
    }
  }

  /** Serialized ModelProto bytes, ready for `InferenceSession.create(bytes)` or a .onnx file. */
  serialize(opset = DEFAULT_OPSET): Uint8Array {
    return encodeModel(this.build(opset))
  }
}

export function encodeModel(model: IModelProto): Uint8Array {
  return onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish()
}

export function decodeModel(bytes: Uint8Array): onnxProto.onnx.ModelProto {
  return onnx.ModelProto.decode(bytes)
}
