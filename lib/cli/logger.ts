/**
 * The one logger of a command run: lines go to the terminal (stderr), to
 * the backup set's log file once it is known, and optionally to syslog.
 * It counts warnings and errors, which `--strict` and the exit code use.
 * Lines logged before the file was attached are replayed into it, so the
 * log file tells the whole run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';

export type LogLevel = 'debug' | 'info' | 'warning' | 'error';

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  readonly warnings: number;
  readonly errors: number;
  /** From now on also append to this file; earlier lines are replayed into it. */
  attachFile(path: string): Promise<void>;
  close(): Promise<void>;
}

export interface LoggerOptions {
  /** Show debug lines on the terminal (the file always gets them). */
  verbose?: boolean;
  /** Terminal shows warnings and errors only. */
  quiet?: boolean;
  /** Colour the level on the terminal (default: when it is a TTY). */
  color?: boolean;
  /** Also send lines to syslog (through logger(1)). */
  syslog?: boolean;
  /** Tag for syslog and the line prefix (default virtnbd). */
  tag?: string;
  /** Terminal stream (default process.stderr). */
  stream?: NodeJS.WritableStream;
}

const LABEL: Record<LogLevel, string> = { debug: 'DEBUG', info: 'INFO', warning: 'WARNING', error: 'ERROR' };
const COLOR: Record<LogLevel, string> = { debug: '\x1b[2m', info: '\x1b[32m', warning: '\x1b[33m', error: '\x1b[31m' };
const SYSLOG_PRIORITY: Record<LogLevel, string> = { debug: 'debug', info: 'info', warning: 'warning', error: 'err' };

/** Bounded replay buffer: a run logs a few hundred lines; cap it anyway. */
const MAX_EARLY_LINES = 10_000;

function timestamp(at: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${at.getFullYear()}-${p(at.getMonth() + 1)}-${p(at.getDate())} ${p(at.getHours())}:${p(at.getMinutes())}:${p(at.getSeconds())}`;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const terminal = options.stream ?? process.stderr;
  const color = options.color ?? Boolean((terminal as NodeJS.WriteStream).isTTY);
  const tag = options.tag ?? 'virtnbd';
  let file: WriteStream | undefined;
  let syslog: ChildProcess | undefined;
  const early: string[] = [];
  const counts = { warnings: 0, errors: 0 };

  if (options.syslog) {
    // logger(1) reads lines from stdin; its failure must not break the run.
    syslog = spawn('logger', ['-t', tag], { stdio: ['pipe', 'ignore', 'ignore'] });
    syslog.on('error', () => (syslog = undefined));
    syslog.stdin?.on('error', () => (syslog = undefined));
  }

  function log(level: LogLevel, message: string): void {
    if (level === 'warning') counts.warnings++;
    if (level === 'error') counts.errors++;
    const line = `[${timestamp(new Date())}] ${LABEL[level]} ${message}`;
    const show = level === 'debug' ? options.verbose : options.quiet ? level === 'warning' || level === 'error' : true;
    if (show) {
      const label = color ? `${COLOR[level]}${LABEL[level]}\x1b[0m` : LABEL[level];
      terminal.write(`[${timestamp(new Date())}] ${label} ${message}\n`);
    }
    if (file) file.write(`${line}\n`);
    else if (early.length < MAX_EARLY_LINES) early.push(line);
    syslog?.stdin?.write(`${SYSLOG_PRIORITY[level]}: ${message}\n`);
  }

  return {
    debug: (m) => log('debug', m),
    info: (m) => log('info', m),
    warn: (m) => log('warning', m),
    error: (m) => log('error', m),
    get warnings() {
      return counts.warnings;
    },
    get errors() {
      return counts.errors;
    },
    async attachFile(path: string): Promise<void> {
      if (file) return;
      const stream = createWriteStream(path, { flags: 'a' });
      await new Promise<void>((resolve, reject) => {
        stream.once('open', () => resolve());
        stream.once('error', reject);
      });
      file = stream;
      for (const line of early.splice(0)) file.write(`${line}\n`);
    },
    async close(): Promise<void> {
      const f = file;
      file = undefined;
      if (f) await new Promise<void>((resolve) => f.end(resolve));
      if (syslog?.stdin) syslog.stdin.end();
      syslog = undefined;
    },
  };
}
