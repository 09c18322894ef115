/**
 * The meta frame's JSON: what disk a stream holds and how it was written.
 * Written byte-identical to virtnbdbackup's `json.dumps(meta, indent=4)`
 * (same key order, Python escaping, Python `datetime.isoformat()` date);
 * read leniently, because backups made by older virtnbdbackup versions lack
 * some keys (stream version 1 has no compression keys and spells the version
 * `stream-version`) and newer ones may add keys.
 */
import { MetadataError, type StreamPosition } from './errors.js';
import { FRAME_HEADER_LENGTH } from './frameHeader.js';
import { pythonJsonDumps } from './pythonJson.js';

export interface StreamMetadata {
  /** Size of the virtual disk in bytes. */
  virtualSize: number;
  /** Sum of the lengths of all data frames. */
  dataSize: number;
  /** Python `datetime.now().isoformat()`: local time, microseconds, no zone. */
  date: string;
  /** Disk target, e.g. "vda". */
  diskName: string;
  /** Source image format, e.g. "qcow2". */
  diskFormat: string;
  /** Checkpoint this backup created, e.g. "virtnbdbackup.0". */
  checkpointName: string;
  /** false, or the LZ4 compression level (virtnbdbackup writes an int); anything but false means compressed. */
  compressed: boolean | number;
  /** Always "lz4" for version 2 streams. */
  compressionMethod: string;
  /** Parent checkpoint name; false (or "" from older versions) when there is none. */
  parentCheckpoint: string | false;
  /** True for inc and diff backups. */
  incremental: boolean;
  /** 2 for streams that may be compressed; 1 for old streams. */
  streamVersion: number;
}

export const STREAM_VERSION = 2;
export const COMPRESSION_METHOD = 'lz4';

/** Where the metadata JSON starts in every stream: right after the first header. */
const META_PAYLOAD_AT: StreamPosition = { frameIndex: 0, byteOffset: FRAME_HEADER_LENGTH };

export interface CreateMetadataOptions {
  virtualSize: number;
  dataSize: number;
  diskName: string;
  diskFormat: string;
  checkpointName: string;
  /** Defaults to "", what virtnbdbackup writes when there is no parent. */
  parentCheckpoint?: string | false;
  incremental?: boolean;
  /** false (default) or the compression level (virtnbdbackup's default level is 2). */
  compressed?: boolean | number;
  /** Defaults to now, with microseconds. */
  date?: string;
}

/** Metadata for a new version 2 stream. */
export function createMetadata(options: CreateMetadataOptions): StreamMetadata {
  return {
    virtualSize: options.virtualSize,
    dataSize: options.dataSize,
    date: options.date ?? pythonIsoDate(),
    diskName: options.diskName,
    diskFormat: options.diskFormat,
    checkpointName: options.checkpointName,
    compressed: options.compressed ?? false,
    compressionMethod: COMPRESSION_METHOD,
    parentCheckpoint: options.parentCheckpoint ?? '',
    incremental: options.incremental ?? false,
    streamVersion: STREAM_VERSION,
  };
}

function pad(value: number, width: number): string {
  return String(value).padStart(width, '0');
}

/**
 * A local time as Python's `datetime.isoformat()` writes it:
 * `2026-11-30T07:45:01.123456`, the fraction left out when it is zero.
 * Without arguments: now, with microseconds from the high-resolution clock.
 */
export function pythonIsoDate(date?: Date, microsecond?: number): string {
  let micro = microsecond;
  let when = date;
  if (when === undefined) {
    const nowMicros = Math.floor((performance.timeOrigin + performance.now()) * 1000);
    when = new Date(Math.floor(nowMicros / 1000));
    micro = nowMicros % 1_000_000;
  }
  micro ??= when.getMilliseconds() * 1000;
  const text =
    `${pad(when.getFullYear(), 4)}-${pad(when.getMonth() + 1, 2)}-${pad(when.getDate(), 2)}` +
    `T${pad(when.getHours(), 2)}:${pad(when.getMinutes(), 2)}:${pad(when.getSeconds(), 2)}`;
  return micro === 0 ? text : `${text}.${pad(micro, 6)}`;
}

/** True when data payloads are LZ4 frames and a compression trailer ends the stream. */
export function isCompressed(metadata: StreamMetadata): boolean {
  return metadata.streamVersion >= 2 && metadata.compressed !== false;
}

/** The JSON bytes of the meta frame, byte-identical to virtnbdbackup's. */
export function serializeMetadata(metadata: StreamMetadata): Buffer {
  // Explicit key order: Python dicts keep insertion order and virtnbdbackup inserts in this one.
  const ordered = {
    virtualSize: metadata.virtualSize,
    dataSize: metadata.dataSize,
    date: metadata.date,
    diskName: metadata.diskName,
    diskFormat: metadata.diskFormat,
    checkpointName: metadata.checkpointName,
    compressed: metadata.compressed,
    compressionMethod: metadata.compressionMethod,
    parentCheckpoint: metadata.parentCheckpoint,
    incremental: metadata.incremental,
    streamVersion: metadata.streamVersion,
  };
  return Buffer.from(pythonJsonDumps(ordered, 4), 'utf8');
}

/** Decode the meta frame's JSON into a plain object (any keys). */
export function decodeMetadataJson(
  bytes: Uint8Array,
  where: StreamPosition = META_PAYLOAD_AT,
): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new MetadataError(where, `metadata is not valid UTF-8 JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new MetadataError(where, 'metadata is not a JSON object');
  }
  return value as Record<string, unknown>;
}

function sizeField(raw: Record<string, unknown>, key: string, where: StreamPosition): number {
  const value = raw[key];
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new MetadataError(where, `metadata ${key} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

function stringField(raw: Record<string, unknown>, key: string, fallback: string, where: StreamPosition): string {
  const value = raw[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value === 'string') return value;
  if (typeof value === 'number') return String(value);
  throw new MetadataError(where, `metadata ${key} must be a string, got ${JSON.stringify(value)}`);
}

/**
 * Turn decoded metadata into a StreamMetadata. Defaults for keys older
 * versions lack: diskFormat "qcow2", checkpointName "", parentCheckpoint
 * false, incremental false, streamVersion 1 (or `stream-version`),
 * compressed false (always false below version 2), compressionMethod "lz4".
 */
export function normalizeMetadata(
  raw: Record<string, unknown>,
  where: StreamPosition = META_PAYLOAD_AT,
): StreamMetadata {
  const version = raw['streamVersion'] ?? raw['stream-version'] ?? 1;
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 1) {
    throw new MetadataError(where, `metadata streamVersion must be a positive integer, got ${JSON.stringify(version)}`);
  }
  let compressed: boolean | number = false;
  if (version >= 2 && raw['compressed'] !== undefined && raw['compressed'] !== null) {
    const value = raw['compressed'];
    if (typeof value !== 'boolean' && typeof value !== 'number') {
      throw new MetadataError(where, `metadata compressed must be false or a level, got ${JSON.stringify(value)}`);
    }
    compressed = value;
  }
  const compressionMethod = stringField(raw, 'compressionMethod', COMPRESSION_METHOD, where);
  if (version >= 2 && compressed !== false && compressionMethod !== COMPRESSION_METHOD) {
    throw new MetadataError(where, `unsupported compression method ${JSON.stringify(compressionMethod)}`);
  }
  const parent = raw['parentCheckpoint'];
  const incremental = raw['incremental'] ?? false;
  if (typeof incremental !== 'boolean') {
    throw new MetadataError(where, `metadata incremental must be true or false, got ${JSON.stringify(incremental)}`);
  }
  const metadata: StreamMetadata = {
    virtualSize: sizeField(raw, 'virtualSize', where),
    dataSize: sizeField(raw, 'dataSize', where),
    date: stringField(raw, 'date', '', where),
    diskName: stringField(raw, 'diskName', '', where),
    diskFormat: stringField(raw, 'diskFormat', 'qcow2', where),
    checkpointName: stringField(raw, 'checkpointName', '', where),
    compressed,
    compressionMethod,
    parentCheckpoint: parent === false || parent === undefined || parent === null
      ? false
      : stringField(raw, 'parentCheckpoint', '', where),
    incremental,
    streamVersion: version,
  };
  if (metadata.dataSize > metadata.virtualSize) {
    throw new MetadataError(
      where,
      `metadata dataSize ${metadata.dataSize} exceeds virtualSize ${metadata.virtualSize}`,
    );
  }
  return metadata;
}

/** Parse and check the meta frame's JSON. */
export function parseMetadata(bytes: Uint8Array, where: StreamPosition = META_PAYLOAD_AT): StreamMetadata {
  return normalizeMetadata(decodeMetadataJson(bytes, where), where);
}
