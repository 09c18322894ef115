;; Adler-32 (RFC 1950) over bytes in this module's memory, with 128-bit SIMD.
;; Built into lib/format/adler32Wasm.ts by scripts/build-wasm.sh (wat2wasm).
;;
;; update(adler, ptr, len) -> adler: continues `adler` over memory[ptr, ptr+len).
;; Per 16-byte vector v (bytes x0..x15) starting with sums a, b:
;;   a += x0 + ... + x15
;;   b += 16 a + 16 x0 + 15 x1 + ... + 1 x15
;; Within a run of blocks, vector lanes hold: s1 = the byte sums, p = s1 summed
;; before each vector (so 16 p is what the earlier vectors added to a, seen by
;; later ones), s2 = the weighted sums. A run is at most 5536 bytes, so no lane
;; overflows 32 bits; runs are combined in 64 bits and reduced modulo 65521.
(module
  (memory (export "memory") 17)
  (func $hsum (param $v v128) (result i64)
    (i64.add
      (i64.add (i64.extend_i32_u (i32x4.extract_lane 0 (local.get $v)))
               (i64.extend_i32_u (i32x4.extract_lane 1 (local.get $v))))
      (i64.add (i64.extend_i32_u (i32x4.extract_lane 2 (local.get $v)))
               (i64.extend_i32_u (i32x4.extract_lane 3 (local.get $v))))))
  (func (export "update") (param $adler i32) (param $ptr i32) (param $len i32) (result i32)
    (local $a i64) (local $b i64) (local $n i32) (local $end i32)
    (local $v v128) (local $s1 v128) (local $s2 v128) (local $p v128)
    (local $wlo v128) (local $whi v128)
    (local.set $a (i64.extend_i32_u (i32.and (local.get $adler) (i32.const 0xffff))))
    (local.set $b (i64.extend_i32_u (i32.shr_u (local.get $adler) (i32.const 16))))
    (local.set $wlo (v128.const i16x8 16 15 14 13 12 11 10 9))
    (local.set $whi (v128.const i16x8 8 7 6 5 4 3 2 1))
    (block $done
      (loop $runs
        (br_if $done (i32.lt_u (local.get $len) (i32.const 16)))
        ;; n = min(len rounded down to 16, 5536)
        (local.set $n (i32.and (local.get $len) (i32.const -16)))
        (if (i32.gt_u (local.get $n) (i32.const 5536)) (then (local.set $n (i32.const 5536))))
        (local.set $end (i32.add (local.get $ptr) (local.get $n)))
        (local.set $s1 (v128.const i32x4 0 0 0 0))
        (local.set $s2 (v128.const i32x4 0 0 0 0))
        (local.set $p (v128.const i32x4 0 0 0 0))
        (loop $vectors
          (local.set $v (v128.load (local.get $ptr)))
          (local.set $p (i32x4.add (local.get $p) (local.get $s1)))
          (local.set $s1 (i32x4.add (local.get $s1)
            (i32x4.extadd_pairwise_i16x8_u (i16x8.extadd_pairwise_i8x16_u (local.get $v)))))
          (local.set $s2 (i32x4.add (local.get $s2)
            (i32x4.add
              (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_u (local.get $v)) (local.get $wlo))
              (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_u (local.get $v)) (local.get $whi)))))
          (local.set $ptr (i32.add (local.get $ptr) (i32.const 16)))
          (br_if $vectors (i32.lt_u (local.get $ptr) (local.get $end))))
        ;; b += n a + 16 p + s2; a += s1
        (local.set $b (i64.add (local.get $b)
          (i64.add (i64.mul (i64.extend_i32_u (local.get $n)) (local.get $a))
                   (i64.add (i64.shl (call $hsum (local.get $p)) (i64.const 4)) (call $hsum (local.get $s2))))))
        (local.set $a (i64.add (local.get $a) (call $hsum (local.get $s1))))
        (local.set $a (i64.rem_u (local.get $a) (i64.const 65521)))
        (local.set $b (i64.rem_u (local.get $b) (i64.const 65521)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $runs)))
    ;; the last < 16 bytes, one at a time
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $a (i64.add (local.get $a) (i64.load8_u (local.get $ptr))))
        (local.set $b (i64.add (local.get $b) (local.get $a)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $tail)))
    (local.set $a (i64.rem_u (local.get $a) (i64.const 65521)))
    (local.set $b (i64.rem_u (local.get $b) (i64.const 65521)))
    (i32.wrap_i64 (i64.or (i64.shl (local.get $b) (i64.const 16)) (local.get $a)))))
