/**
 * JSON text exactly as Python's `json.dumps(value)` / `json.dumps(value, indent=N)`
 * writes it (default ensure_ascii=True, default separators), because the
 * metadata and trailer of a sparse stream must be byte-identical to what
 * virtnbdbackup writes. JSON.stringify differs in two ways that matter here:
 * Python escapes every character outside printable ASCII (including DEL and
 * all non-ASCII, as \uXXXX UTF-16 code units), and without indent Python puts
 * a space after `,` and `:`.
 */

export type PythonJsonValue =
  | null
  | boolean
  | number
  | string
  | PythonJsonValue[]
  | { [key: string]: PythonJsonValue };

const SHORT_ESCAPES: Record<string, string> = {
  '"': '\\"',
  '\\': '\\\\',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
  '\b': '\\b',
  '\f': '\\f',
};

/** A string literal as Python's ensure_ascii encoder writes it. */
export function pythonJsonString(text: string): string {
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    const code = text.charCodeAt(i);
    const short = SHORT_ESCAPES[ch];
    if (short !== undefined) out += short;
    else if (code >= 0x20 && code <= 0x7e) out += ch;
    else out += '\\u' + code.toString(16).padStart(4, '0');
  }
  return out + '"';
}

function pythonNumber(value: number): string {
  if (!Number.isFinite(value)) {
    // Python would write NaN/Infinity, which is not JSON; nothing we write needs it.
    throw new RangeError(`cannot encode ${value} as JSON`);
  }
  if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
    throw new RangeError(`integer ${value} is beyond exact representation`);
  }
  return String(value);
}

/**
 * Serialize like Python's json.dumps. With `indent` (a number of spaces),
 * items are separated by ",\n" and keys by ": "; without it by ", " and ": ".
 */
export function pythonJsonDumps(value: PythonJsonValue, indent?: number): string {
  return encode(value, indent, 0);
}

function encode(value: PythonJsonValue, indent: number | undefined, depth: number): string {
  if (value === null) return 'null';
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'number') return pythonNumber(value);
  if (typeof value === 'string') return pythonJsonString(value);
  const items: string[] = Array.isArray(value)
    ? value.map((item) => encode(item, indent, depth + 1))
    : Object.entries(value).map(
        ([key, item]) => `${pythonJsonString(key)}: ${encode(item, indent, depth + 1)}`,
      );
  const [open, close] = Array.isArray(value) ? ['[', ']'] : ['{', '}'];
  if (items.length === 0) return open + close;
  if (indent === undefined) return open + items.join(', ') + close;
  const inner = '\n' + ' '.repeat(indent * (depth + 1));
  const outer = '\n' + ' '.repeat(indent * depth);
  return open + inner + items.join(',' + inner) + outer + close;
}
