/**
 * What the backup needs of a logger: four levels, and optionally a log
 * file to attach once the target directory is known. The CLI's Logger
 * (lib/cli/logger.ts) fits, as does any console-like object, so the
 * library runs without a terminal.
 */
export interface BackupLogger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  /** From now on also append to this file (earlier lines replayed into it). */
  attachFile?(path: string): Promise<void>;
}

/** A logger that drops everything. */
export const silentLogger: BackupLogger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};

function stamp(at: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${at.getFullYear()}-${p(at.getMonth() + 1)}-${p(at.getDate())} ${p(at.getHours())}:${p(at.getMinutes())}:${p(at.getSeconds())}`;
}

/** Bounded: a run logs a few hundred lines. */
const MAX_RECORDED_LINES = 100_000;

/**
 * A logger that forwards to `inner` and keeps a copy of every line, for a
 * run whose log must travel inside its zip archive (there is no target
 * directory to hold a log file).
 */
export class RecordingLogger implements BackupLogger {
  private readonly lines: string[] = [];

  constructor(private readonly inner: BackupLogger) {}

  private record(level: string, message: string): void {
    if (this.lines.length < MAX_RECORDED_LINES) this.lines.push(`[${stamp(new Date())}] ${level} ${message}`);
  }

  debug(message: string): void {
    this.record('DEBUG', message);
    this.inner.debug(message);
  }
  info(message: string): void {
    this.record('INFO', message);
    this.inner.info(message);
  }
  warn(message: string): void {
    this.record('WARNING', message);
    this.inner.warn(message);
  }
  error(message: string): void {
    this.record('ERROR', message);
    this.inner.error(message);
  }

  /** Every line so far, newline-terminated. */
  text(): string {
    return this.lines.map((l) => `${l}\n`).join('');
  }
}
