/**
 * Buffers lent down a pipeline and handed back when nothing reads them any
 * more, so a reader reuses resident memory instead of allocating a fresh
 * buffer per read (garbage that V8 collects late and malloc keeps: a
 * restore reading 1 MiB buffers peaked at ~60 MB of it).
 *
 * A lent buffer starts with one hold, its consumer's. A stage that keeps a
 * view of it past its own turn (a piece passed on, a part carried to the
 * next input) retains it and releases it when done; once every hold is
 * released the buffer is reused. Views of buffers not lent here are
 * ignored, so a stage may release whatever it held; a buffer never
 * released is simply garbage-collected, never reused early.
 */
export interface BufferLoans {
  retain(view: Uint8Array): void;
  release(view: Uint8Array): void;
}

interface Loan {
  buffer: Buffer;
  holds: number;
}

export class BufferLender implements BufferLoans {
  /** Keyed by memory, weakly: a loan never released dies with its buffer. */
  private readonly loans = new WeakMap<ArrayBufferLike, Loan>();
  private readonly spare: Buffer[] = [];
  /** Buffers allocated so far (not reused ones). */
  allocated = 0;

  constructor(
    /** Bytes of each buffer. */
    readonly size: number,
    /** Released buffers kept for reuse; more are left to the garbage collector. */
    private readonly spareLimit: number,
  ) {}

  /** A buffer of `size` bytes (with memory of its own, which keys the loan) holding one hold. */
  lend(): Buffer {
    let buffer = this.spare.pop();
    if (!buffer) {
      buffer = Buffer.allocUnsafeSlow(this.size);
      this.allocated += 1;
    }
    this.loans.set(buffer.buffer, { buffer, holds: 1 });
    return buffer;
  }

  retain(view: Uint8Array): void {
    const loan = this.loans.get(view.buffer);
    if (loan) loan.holds += 1;
  }

  release(view: Uint8Array): void {
    const loan = this.loans.get(view.buffer);
    if (!loan || --loan.holds > 0) return;
    this.loans.delete(view.buffer);
    if (this.spare.length < this.spareLimit) this.spare.push(loan.buffer);
  }

  /** Forget every spare buffer (the lender's user is done). */
  drop(): void {
    this.spare.length = 0;
  }
}

/** Loans that ignore everything: for stages fed by sources that do not lend. */
export const NO_LOANS: BufferLoans = { retain() {}, release() {} };
