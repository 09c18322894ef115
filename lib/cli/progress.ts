/**
 * A per-disk progress bar on the terminal: label, bar, percent, bytes and
 * rate, redrawn at most a few times a second. Disabled (a no-op) with -n or
 * when stderr is not a TTY, so logs and pipes stay clean.
 */
export interface Progress {
  update(bytes: number): void;
  done(): void;
}

export interface ProgressOptions {
  label: string;
  total: number;
  enabled: boolean;
  stream?: NodeJS.WriteStream;
}

const REDRAW_MS = 200;
const WIDTH = 30;

function human(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function createProgress(options: ProgressOptions): Progress {
  if (!options.enabled) return { update: () => {}, done: () => {} };
  const stream = options.stream ?? process.stderr;
  const started = Date.now();
  let seen = 0;
  let drawn = 0;
  const draw = (): void => {
    const total = Math.max(options.total, 1);
    const ratio = Math.min(seen / total, 1);
    const filled = Math.round(ratio * WIDTH);
    const seconds = Math.max((Date.now() - started) / 1000, 0.001);
    stream.write(
      `\r${options.label} [${'#'.repeat(filled)}${' '.repeat(WIDTH - filled)}] ${(ratio * 100).toFixed(0).padStart(3)}% ` +
        `${human(seen)}/${human(options.total)} ${human(seen / seconds)}/s`,
    );
  };
  return {
    update(bytes: number): void {
      seen += bytes;
      const now = Date.now();
      if (now - drawn >= REDRAW_MS) {
        drawn = now;
        draw();
      }
    },
    done(): void {
      draw();
      stream.write('\n');
    },
  };
}
