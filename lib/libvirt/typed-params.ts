/**
 * remote_typed_param: libvirt's list of named, typed values (job stats,
 * guest info, tunables). On the wire: a field name, then a union whose
 * discriminant is the virTypedParameterType.
 */
import { REMOTE_STRING_MAX, readString, writeString } from './remote-types.js';
import { XdrError, type XdrReader, type XdrWriter } from './xdr.js';

export const VIR_TYPED_PARAM_INT = 1;
export const VIR_TYPED_PARAM_UINT = 2;
export const VIR_TYPED_PARAM_LLONG = 3;
export const VIR_TYPED_PARAM_ULLONG = 4;
export const VIR_TYPED_PARAM_DOUBLE = 5;
export const VIR_TYPED_PARAM_BOOLEAN = 6;
export const VIR_TYPED_PARAM_STRING = 7;

export type TypedParamType = 1 | 2 | 3 | 4 | 5 | 6 | 7;

/**
 * 64-bit values become numbers when they fit exactly (sizes, times,
 * counters always do in practice), bigint otherwise, so nothing is rounded.
 */
export type TypedParamValue = number | bigint | boolean | string;

export interface TypedParam {
  field: string;
  type: TypedParamType;
  value: TypedParamValue;
}

/** Typed params by field name; a repeated field keeps its last value. */
export type TypedParams = Record<string, TypedParamValue>;

function narrow(v: bigint): number | bigint {
  const n = Number(v);
  return Number.isSafeInteger(n) ? n : v;
}

export function readTypedParam(r: XdrReader): TypedParam {
  const field = r.string(REMOTE_STRING_MAX);
  const type = r.int();
  switch (type) {
    case VIR_TYPED_PARAM_INT:
      return { field, type, value: r.int() };
    case VIR_TYPED_PARAM_UINT:
      return { field, type, value: r.uint() };
    case VIR_TYPED_PARAM_LLONG:
      return { field, type, value: narrow(r.hyper()) };
    case VIR_TYPED_PARAM_ULLONG:
      return { field, type, value: narrow(r.uhyper()) };
    case VIR_TYPED_PARAM_DOUBLE:
      return { field, type, value: r.double() };
    case VIR_TYPED_PARAM_BOOLEAN:
      return { field, type, value: r.int() !== 0 };
    case VIR_TYPED_PARAM_STRING:
      return { field, type, value: readString(r) };
    default:
      throw new XdrError(`typed parameter '${field}' has unknown type ${type}`);
  }
}

export function readTypedParams(r: XdrReader, max: number): TypedParam[] {
  return r.array(readTypedParam, max);
}

export function writeTypedParam(w: XdrWriter, p: TypedParam): void {
  writeString(w, p.field);
  w.int(p.type);
  const bad = (): never => {
    throw new XdrError(`typed parameter '${p.field}' of type ${p.type} cannot hold ${typeof p.value} ${String(p.value)}`);
  };
  switch (p.type) {
    case VIR_TYPED_PARAM_INT:
      if (typeof p.value !== 'number') bad();
      w.int(p.value as number);
      break;
    case VIR_TYPED_PARAM_UINT:
      if (typeof p.value !== 'number') bad();
      w.uint(p.value as number);
      break;
    case VIR_TYPED_PARAM_LLONG:
      if (typeof p.value !== 'number' && typeof p.value !== 'bigint') bad();
      w.hyper(p.value as number | bigint);
      break;
    case VIR_TYPED_PARAM_ULLONG:
      if (typeof p.value !== 'number' && typeof p.value !== 'bigint') bad();
      w.uhyper(p.value as number | bigint);
      break;
    case VIR_TYPED_PARAM_DOUBLE:
      if (typeof p.value !== 'number') bad();
      w.double(p.value as number);
      break;
    case VIR_TYPED_PARAM_BOOLEAN:
      if (typeof p.value !== 'boolean') bad();
      w.int(p.value ? 1 : 0);
      break;
    case VIR_TYPED_PARAM_STRING:
      if (typeof p.value !== 'string') bad();
      writeString(w, p.value as string);
      break;
    default:
      bad();
  }
}

export function typedParamsToObject(params: readonly TypedParam[]): TypedParams {
  const out: TypedParams = {};
  for (const p of params) out[p.field] = p.value;
  return out;
}
