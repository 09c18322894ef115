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

// Restore: restore(), dump and verify, and their pure planning.
export { restore } from './restore/restore.js';
export type { RestoreOptions, RestoreContext, RestoreResult, RestoredImage, RestoreAction, ProgressSink } from './restore/options.js';
export * from './restore/errors.js';
export { planDiskChain, planSequence, StreamingChain, chainRole, type ChainFile, type ChainRole, type DiskChain, type ChainOptions, type ChainDecision } from './restore/chain.js';
export { adjustDomainConfig, restoredDomainName, DomainConfigError, type AdjustConfigOptions, type AdjustedConfig, type RestoredDiskImage } from './restore/config.js';
export { VerifyError } from './restore/verify.js';
export { createImage, imageInfo, convertImage, QemuImgError, type QemuImageInfo } from './qemu/qemuImg.js';
export { QemuNbdServer, QemuNbdError, type QemuNbdOptions, type QemuCacheMode } from './qemu/qemuNbd.js';

// Backup: backup() and what it is made of.
export { backup, type BackupRequest, type BackupContext, type BackupResult } from './backup/backup.js';
export { BackupError, BackupInterruptedError, type BackupProblem } from './backup/errors.js';
export { planBackup, BackupPlanError, type BackupPlan, type BackupPlanInput, type Level, type OutputType } from './backup/level.js';
export { RecordingLogger, silentLogger, type BackupLogger } from './backup/log.js';
export { backupDisk, type DiskBackupSpec, type DiskBackupResult, type DiskProgress } from './backup/diskBackup.js';
export { BackupJob } from './backup/job.js';
export { chooseEndpoint, exportUri, exportUriString, describeEndpoint, DEFAULT_NBD_PORT, DEFAULT_TLS_CERT_DIR, type NbdEndpoint } from './backup/nbdEndpoint.js';
export { DirectoryOutput, type SetOutput } from './backup/output.js';
export { ZipOutput } from './backup/zipOutput.js';
export { ZeroAsData, type ZeroAsDataOptions } from '../streams/ZeroAsData.js';
export { RawImageSink, RawImageSinkError, type RawImageSinkOptions } from '../streams/RawImageSink.js';
export { ProgressTap } from '../streams/ProgressTap.js';

// Remote hypervisors: commands and files over ssh, qemu-nbd there.
export { SshHost, SshError, shellQuote, type SshTarget } from './remote/ssh.js';
export { LocalHostFiles, FileExistsError, type HostFiles } from './remote/hostFiles.js';
export { SshHostFiles } from './remote/sshHostFiles.js';
export { RemoteQemuNbd, type RemoteQemuNbdOptions } from './remote/remoteQemuNbd.js';

// LZ4 frames (our own codec; what Lz4Compress/Lz4Decompress run on worker threads).
export { compressLz4Frame } from './lz4/frameEncoder.js';
export { decompressLz4Frame } from './lz4/frameDecoder.js';
export { Lz4DecodeError, Lz4ChecksumError } from './lz4/errors.js';
export { Lz4WorkerPool, type Lz4WorkerPoolOptions } from './lz4/pool.js';

// Map: serve a backup chain over NBD (virtnbdmap), its index, export and overlay.
export { map, type MapOptions, type MapContext, type Mapping, type MappedDisk } from './map/map.js';
export { ChainIndex, overlayRanges, type Frame, type Lz4Piece, type MappedRange, type Segment, type ChainIndexStats } from './map/chainIndex.js';
export { scanStream, DEFAULT_UNIT_SIZE, type ScannedStream, type ScanOptions, type PayloadLocation } from './map/scan.js';
export { loadChains, type LoadedChain, type LoadOptions } from './map/chains.js';
export { ChainExport, type ChainExportOptions, type ChainFileHandle, type CorruptFrame } from './map/chainExport.js';
export { CowOverlay, type CowOverlayOptions } from './map/overlay.js';
export { PieceCache, type PieceCacheOptions, type PieceCacheStats } from './map/pieceCache.js';
export { instantDomainConfig, type InstantConfig, type InstantConfigOptions, type InstantDisk, type BootFilePaths } from './map/bootConfig.js';
export { MapError, MapInputError, MapChainError, BootError } from './map/errors.js';
