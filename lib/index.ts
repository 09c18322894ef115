/**
 * virtnbd's public API: the stream stages, the sparse stream format, the
 * NBD client and server, and the libvirt client. The backup(), restore()
 * and map() orchestrations join them as their issues land.
 */

// Pipeline objects.
export type { Chunk, FrameSpan } from './chunk.js';
export type { Extent } from './extent.js';

// Stream stages.
export { ExtentSource, type ExtentSourceOptions } from '../streams/ExtentSource.js';
export { NbdReader, type NbdReaderOptions } from '../streams/NbdReader.js';
export { NbdWriter, type NbdWriterOptions } from '../streams/NbdWriter.js';
export { SparseFramer, DEFAULT_MAX_REQUEST_SIZE, type SparseFramerOptions } from '../streams/SparseFramer.js';
export { SparseParser, type SparseParserOptions } from '../streams/SparseParser.js';
export { Lz4Compress, type Lz4CompressOptions } from '../streams/Lz4Compress.js';
export { Lz4Decompress, type Lz4DecompressOptions } from '../streams/Lz4Decompress.js';
export { ChecksumTap } from '../streams/ChecksumTap.js';
export { FileSink, FileSinkError, type FileSinkOptions } from '../streams/FileSink.js';
export { ZipSink, ZipSinkError, type ZipSinkOptions, type ZipEntryOptions } from '../streams/ZipSink.js';
export { ZipSource, ZipSourceError, type ZipEntry, type ZipSourceOptions } from '../streams/ZipSource.js';

// The sparse stream format and backup-set files.
export * from './format/errors.js';
export * from './format/frameHeader.js';
export * from './format/metadata.js';
export * from './format/trailer.js';
export * from './format/adler32.js';
export * from './format/naming.js';

// NBD.
export { NbdClient } from './nbd/client.js';
export type {
  BlockStatusExtent,
  BlockStatusResult,
  NbdClientOptions,
  NbdClientState,
  NbdTarget,
  WriteOptions,
  WriteZeroesOptions,
} from './nbd/client.js';
export { NbdPool, type NbdPoolOptions } from './nbd/pool.js';
export type { NbdBlockDevice } from './nbd/device.js';
export * from './nbd/errors.js';
export { parseNbdUri, formatNbdUri, isNbdUri, NbdUriError, type NbdUri } from './nbd/uri.js';
export {
  NbdServer,
  NbdServerConfigError,
  type NbdServerOptions,
  type ListenTarget,
  type ServerAddress,
} from './nbd/server.js';
export {
  ExportError,
  type Export,
  type AllocationExtent,
  type NbdErrorCode,
  type BlockSizeConstraints as ExportBlockSizeConstraints,
  type WriteZeroesOptions as ExportWriteZeroesOptions,
} from './nbd/export.js';
export { MemoryExport } from './nbd/memoryExport.js';
export { FileExport } from './nbd/fileExport.js';
export { TlsCredentialsError, type ServerTlsOptions } from './nbd/server-tls.js';

// libvirt.
export * from './libvirt/index.js';
