/**
 * A stack of undo steps for what a test made on the host (VMs, backup jobs,
 * files). Steps run last-made-first, each even if an earlier one failed, so
 * one stuck VM does not leak the rest. Every live stack is also unwound
 * synchronously when the process exits or is signalled, as a safety net for
 * tests that crash past their teardown.
 */

export interface CleanupStep {
  /** What is undone, for error messages, e.g. `VM vnbdtest-123-ab12cd`. */
  label: string;
  run(): Promise<void>;
  /** Synchronous best-effort version for process exit; omitted if nothing must be done then. */
  runSync?(): void;
}

const live = new Set<CleanupStack>();

export class CleanupStack {
  private steps: CleanupStep[] = [];

  constructor() {
    live.add(this);
    installExitHandlers();
  }

  push(step: CleanupStep): void {
    this.steps.push(step);
  }

  /** Undo everything, newest first; throws one error listing every step that failed. */
  async unwind(): Promise<void> {
    live.delete(this);
    const errors: Error[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        await step.run();
      } catch (e) {
        errors.push(new Error(`cleanup of ${step.label} failed: ${(e as Error).message}`, { cause: e }));
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, errors.map((e) => e.message).join('\n'));
  }

  /** Process-exit path: no promises can run, so use each step's synchronous version. */
  unwindSync(): void {
    live.delete(this);
    while (this.steps.length > 0) {
      const step = this.steps.pop()!;
      try {
        step.runSync?.();
      } catch {
        // Best effort: the process is going away; the stale sweep of a later run catches the rest.
      }
    }
  }
}

let installed = false;

function installExitHandlers(): void {
  if (installed) return;
  installed = true;
  process.once('exit', unwindAllSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      unwindAllSync();
      // Die of the same signal as we would have without this handler.
      process.removeListener(signal, onSignal);
      process.kill(process.pid, signal);
    };
    process.once(signal, onSignal);
  }
}

function unwindAllSync(): void {
  for (const stack of [...live]) stack.unwindSync();
}
