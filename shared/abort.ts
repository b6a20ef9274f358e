/**
 * Waits for `promise`, or rejects with the signal's reason when it aborts first. The promise
 * itself goes on: other callers may share it.
 */
export async function raceSignal<T> (promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (signal == null) return await promise
  signal.throwIfAborted()
  return await new Promise<T>((resolve, reject) => {
    const onAbort = (): void => { reject(signal.reason) }
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => { signal.removeEventListener('abort', onAbort) })
  })
}

/** A signal that aborts after `ms` (none: never by time) or with any of `parents`; `clear()` releases it. */
export interface Deadline {
  readonly signal: AbortSignal
  clear: () => void
}

/**
 * Like `AbortSignal.any([...parents, AbortSignal.timeout(ms)])`, but what it hangs on a
 * long-lived parent is removed by `clear()`. `AbortSignal.any` over a parent that lives as
 * long as the process keeps a WeakRef per call in the parent until a GC that may never come
 * (Node issue 55351): per request, that is memory an untrusted client can grow.
 */
export function deadline (ms: number | undefined, ...parents: Array<AbortSignal | undefined>): Deadline {
  const controller = new AbortController()
  const linked: AbortSignal[] = []
  const timer = ms == null ? undefined : setTimeout(() => { controller.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')) }, ms)
  timer?.unref()
  const onAbort = (event: Event): void => { controller.abort((event.target as AbortSignal).reason) }
  const clear = (): void => {
    clearTimeout(timer)
    for (const parent of linked) parent.removeEventListener('abort', onAbort)
    linked.length = 0
  }
  for (const parent of parents) {
    if (parent == null) continue
    if (parent.aborted) {
      controller.abort(parent.reason)
      break
    }
    parent.addEventListener('abort', onAbort, { once: true })
    linked.push(parent)
  }
  controller.signal.addEventListener('abort', clear, { once: true })
  return { signal: controller.signal, clear }
}
