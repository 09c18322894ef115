/**
 * Backing up disks `workers` at a time (`-w`). The first failure stops the
 * others (their pipelines are aborted through the signal each gets) and is
 * what the run reports; an outer abort (Ctrl-C) stops all and its reason
 * is reported instead.
 */
export async function runPool<T, R>(
  items: readonly T[],
  workers: number,
  work: (item: T, signal: AbortSignal) => Promise<R>,
  outer?: AbortSignal,
): Promise<R[]> {
  const controller = new AbortController();
  const onOuter = (): void => controller.abort(outer?.reason);
  if (outer?.aborted) onOuter();
  outer?.addEventListener('abort', onOuter, { once: true });
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async (): Promise<void> => {
    while (next < items.length && !controller.signal.aborted) {
      const index = next++;
      try {
        results[index] = await work(items[index] as T, controller.signal);
      } catch (error) {
        failure ??= { error };
        controller.abort(error);
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, Math.min(workers, items.length)) }, worker));
  } finally {
    outer?.removeEventListener('abort', onOuter);
  }
  if (outer?.aborted) throw outer.reason;
  if (failure) throw failure.error;
  return results;
}
