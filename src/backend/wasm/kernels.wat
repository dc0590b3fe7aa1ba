;; SIMD kernels of the CPU backend (WebAssembly 128-bit SIMD). Pointers are byte offsets into the shared
;; memory that holds the model weights, the KV cache and the activations. Compiled at build time by
;; tools/build-wasm.mjs into src/backend/wasm/kernels-wasm.ts.
(module
  (import "env" "memory" (memory 1 65536 shared))

  ;; horizontal sum of an f32x4
  (func $hsum (param $v v128) (result f32)
    (f32.add
      (f32.add (f32x4.extract_lane 0 (local.get $v)) (f32x4.extract_lane 1 (local.get $v)))
      (f32.add (f32x4.extract_lane 2 (local.get $v)) (f32x4.extract_lane 3 (local.get $v)))))

  ;; 4 halfs (u32 lanes holding f16 bits) -> f32x4, exact for normal and subnormal values
  (func $h2f (param $h v128) (result v128)
    (v128.or
      (f32x4.mul
        (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x7fff 0x7fff 0x7fff 0x7fff)) (i32.const 13))
        (v128.const i32x4 0x77800000 0x77800000 0x77800000 0x77800000)) ;; 2^112
      (i32x4.shl (v128.and (local.get $h) (v128.const i32x4 0x8000 0x8000 0x8000 0x8000)) (i32.const 16))))

  ;; dot of two f32 vectors of n (multiple of 4) elements
  (func $dot (param $a i32) (param $b i32) (param $n i32) (result f32)
    (local $acc v128) (local $acc2 v128) (local $end i32)
    (local.set $end (i32.add (local.get $a) (i32.shl (local.get $n) (i32.const 2))))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (i32.add (local.get $a) (i32.const 16)) (local.get $end)))
        (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (v128.load (local.get $a)) (v128.load (local.get $b)))))
        (local.set $acc2 (f32x4.add (local.get $acc2) (f32x4.mul (v128.load offset=16 (local.get $a)) (v128.load offset=16 (local.get $b)))))
        (local.set $a (i32.add (local.get $a) (i32.const 32)))
        (local.set $b (i32.add (local.get $b) (i32.const 32)))
        (br_if $l (i32.lt_u (local.get $a) (local.get $end)))))
    (if (i32.lt_u (local.get $a) (local.get $end))
      (then (local.set $acc (f32x4.add (local.get $acc) (f32x4.mul (v128.load (local.get $a)) (v128.load (local.get $b)))))))
    (call $hsum (f32x4.add (local.get $acc) (local.get $acc2))))

  ;; out[t*outStride + r] = W[r] . x[t] for r < rows, t < n; W f32 [rows x cols], cols % 4 == 0
  (func (export "gemm_f32") (param $w i32) (param $rows i32) (param $cols i32) (param $x i32) (param $n i32) (param $out i32) (param $outStride i32)
    (local $r i32) (local $t i32) (local $i i32) (local $rb i32) (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $xo i32) (local $xv v128) (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $o i32)
    (local.set $rb (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $r (i32.const 0))
    (block $rdone (loop $rl
      (br_if $rdone (i32.gt_s (i32.add (local.get $r) (i32.const 4)) (local.get $rows)))
      (local.set $w0 (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $rb))))
      (local.set $w1 (i32.add (local.get $w0) (local.get $rb)))
      (local.set $w2 (i32.add (local.get $w1) (local.get $rb)))
      (local.set $w3 (i32.add (local.get $w2) (local.get $rb)))
      (local.set $t (i32.const 0))
      (block $tdone (loop $tl
        (br_if $tdone (i32.ge_s (local.get $t) (local.get $n)))
        (local.set $xo (i32.add (local.get $x) (i32.mul (local.get $t) (local.get $rb))))
        (local.set $a0 (v128.const i32x4 0 0 0 0)) (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0)) (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (block $idone (loop $il
          (br_if $idone (i32.ge_s (local.get $i) (local.get $rb)))
          (local.set $xv (v128.load (i32.add (local.get $xo) (local.get $i))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w0) (local.get $i))))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w1) (local.get $i))))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w2) (local.get $i))))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $xv) (v128.load (i32.add (local.get $w3) (local.get $i))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $il)))
        (local.set $o (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $outStride)) (local.get $r)) (i32.const 2))))
        (f32.store (local.get $o) (call $hsum (local.get $a0)))
        (f32.store offset=4 (local.get $o) (call $hsum (local.get $a1)))
        (f32.store offset=8 (local.get $o) (call $hsum (local.get $a2)))
        (f32.store offset=12 (local.get $o) (call $hsum (local.get $a3)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $tl)))
      (local.set $r (i32.add (local.get $r) (i32.const 4)))
      (br $rl)))
    ;; remaining rows one at a time
    (block $rdone2 (loop $rl2
      (br_if $rdone2 (i32.ge_s (local.get $r) (local.get $rows)))
      (local.set $t (i32.const 0))
      (block $tdone2 (loop $tl2
        (br_if $tdone2 (i32.ge_s (local.get $t) (local.get $n)))
        (f32.store
          (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $outStride)) (local.get $r)) (i32.const 2)))
          (call $dot (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $rb)))
                     (i32.add (local.get $x) (i32.mul (local.get $t) (local.get $rb))) (local.get $cols)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $tl2)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rl2))))

  ;; f16 rows -> f32: dst[i] = f16(src[i]) for i < n (n % 8 == 0)
  (func (export "f16_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $h v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
      (local.set $h (v128.load (local.get $src)))
      (v128.store (local.get $dst) (call $h2f (i32x4.extend_low_i16x8_u (local.get $h))))
      (v128.store offset=16 (local.get $dst) (call $h2f (i32x4.extend_high_i16x8_u (local.get $h))))
      (local.set $src (i32.add (local.get $src) (i32.const 16)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
      (br $l))))

  ;; bf16 rows -> f32 (n % 8 == 0)
  (func (export "bf16_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $h v128)
    (local.set $end (i32.add (local.get $src) (i32.shl (local.get $n) (i32.const 1))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $src) (local.get $end)))
      (local.set $h (v128.load (local.get $src)))
      (v128.store (local.get $dst) (i32x4.shl (i32x4.extend_low_i16x8_u (local.get $h)) (i32.const 16)))
      (v128.store offset=16 (local.get $dst) (i32x4.shl (i32x4.extend_high_i16x8_u (local.get $h)) (i32.const 16)))
      (local.set $src (i32.add (local.get $src) (i32.const 16)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
      (br $l))))

  ;; Q8_0 rows -> f32: blocks of 34 bytes (f16 scale, 32 int8), n % 32 == 0
  (func (export "q8_0_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $d v128) (local $q v128) (local $q16 v128)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $h2f (i32x4.splat (i32.load16_u (local.get $src)))))
      (local.set $q (v128.load offset=2 (local.get $src)))
      (local.set $q16 (i16x8.extend_low_i8x16_s (local.get $q)))
      (v128.store (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $q16)))))
      (v128.store offset=16 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $q16)))))
      (local.set $q16 (i16x8.extend_high_i8x16_s (local.get $q)))
      (v128.store offset=32 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $q16)))))
      (v128.store offset=48 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $q16)))))
      (local.set $q (v128.load offset=18 (local.get $src)))
      (local.set $q16 (i16x8.extend_low_i8x16_s (local.get $q)))
      (v128.store offset=64 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $q16)))))
      (v128.store offset=80 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $q16)))))
      (local.set $q16 (i16x8.extend_high_i8x16_s (local.get $q)))
      (v128.store offset=96 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $q16)))))
      (v128.store offset=112 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $q16)))))
      (local.set $src (i32.add (local.get $src) (i32.const 34)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 128)))
      (br $l))))

;; out[t*outStride + r] = W[r] . x[t] for r < rows (a multiple of 4), t < n, W in Q8_0 (34-byte blocks:
  ;; f16 scale, 32 int8) and x quantised the same way (llama.cpp's q8_0 x q8_0 product): xq [n][cols] int8
  ;; values held as i16, xs [n][cols / 32] f32 scales. Four rows at a time share each block of x; integer
  ;; dot products (i32x4.dot_i16x8_s) and one f32 multiply-add per block, row and lane: no weight is
  ;; converted to f32. cols % 32 == 0.
  (func (export "gemv_q8_0") (param $w i32) (param $rows i32) (param $cols i32) (param $xq i32) (param $xs i32) (param $n i32) (param $out i32) (param $outStride i32)
    (local $r i32) (local $t i32) (local $nb i32) (local $rowBytes i32) (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $xb i32) (local $sb i32) (local $end i32) (local $o i32)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128) (local $q v128) (local $p v128) (local $d v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local.set $nb (i32.shr_u (local.get $cols) (i32.const 5)))
    (local.set $rowBytes (i32.mul (local.get $nb) (i32.const 34)))
    (local.set $r (i32.const 0))
    (block $rdone (loop $rl
      (br_if $rdone (i32.ge_s (local.get $r) (local.get $rows)))
      (local.set $t (i32.const 0))
      (block $tdone (loop $tl
        (br_if $tdone (i32.ge_s (local.get $t) (local.get $n)))
        (local.set $w0 (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $rowBytes))))
        (local.set $w1 (i32.add (local.get $w0) (local.get $rowBytes)))
        (local.set $w2 (i32.add (local.get $w1) (local.get $rowBytes)))
        (local.set $w3 (i32.add (local.get $w2) (local.get $rowBytes)))
        (local.set $end (local.get $w1))
        (local.set $xb (i32.add (local.get $xq) (i32.shl (i32.mul (local.get $t) (local.get $cols)) (i32.const 1))))
        (local.set $sb (i32.add (local.get $xs) (i32.shl (i32.mul (local.get $t) (local.get $nb)) (i32.const 2))))
        (local.set $a0 (v128.const i32x4 0 0 0 0)) (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0)) (local.set $a3 (v128.const i32x4 0 0 0 0))
        (block $bdone (loop $bl
          (br_if $bdone (i32.ge_u (local.get $w0) (local.get $end)))
          (local.set $x0 (v128.load (local.get $xb))) (local.set $x1 (v128.load offset=16 (local.get $xb)))
          (local.set $x2 (v128.load offset=32 (local.get $xb))) (local.set $x3 (v128.load offset=48 (local.get $xb)))
          ;; the four rows' block scales (f16) times x's
          (local.set $d (i32x4.replace_lane 3 (i32x4.replace_lane 2 (i32x4.replace_lane 1 (i32x4.splat (i32.load16_u (local.get $w0)))
            (i32.load16_u (local.get $w1))) (i32.load16_u (local.get $w2))) (i32.load16_u (local.get $w3))))
          (local.set $d (f32x4.mul (call $h2f (local.get $d)) (v128.load32_splat (local.get $sb))))
          (local.set $q (v128.load offset=2 (local.get $w0)))
          (local.set $p (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x0)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x1))))
          (local.set $q (v128.load offset=18 (local.get $w0)))
          (local.set $p (i32x4.add (local.get $p) (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x2)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x3)))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (f32x4.convert_i32x4_s (local.get $p)) (f32x4.splat (f32x4.extract_lane 0 (local.get $d))))))
          (local.set $q (v128.load offset=2 (local.get $w1)))
          (local.set $p (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x0)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x1))))
          (local.set $q (v128.load offset=18 (local.get $w1)))
          (local.set $p (i32x4.add (local.get $p) (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x2)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x3)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (f32x4.convert_i32x4_s (local.get $p)) (f32x4.splat (f32x4.extract_lane 1 (local.get $d))))))
          (local.set $q (v128.load offset=2 (local.get $w2)))
          (local.set $p (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x0)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x1))))
          (local.set $q (v128.load offset=18 (local.get $w2)))
          (local.set $p (i32x4.add (local.get $p) (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x2)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x3)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (f32x4.convert_i32x4_s (local.get $p)) (f32x4.splat (f32x4.extract_lane 2 (local.get $d))))))
          (local.set $q (v128.load offset=2 (local.get $w3)))
          (local.set $p (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x0)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x1))))
          (local.set $q (v128.load offset=18 (local.get $w3)))
          (local.set $p (i32x4.add (local.get $p) (i32x4.add (i32x4.dot_i16x8_s (i16x8.extend_low_i8x16_s (local.get $q)) (local.get $x2)) (i32x4.dot_i16x8_s (i16x8.extend_high_i8x16_s (local.get $q)) (local.get $x3)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (f32x4.convert_i32x4_s (local.get $p)) (f32x4.splat (f32x4.extract_lane 3 (local.get $d))))))
          (local.set $w0 (i32.add (local.get $w0) (i32.const 34))) (local.set $w1 (i32.add (local.get $w1) (i32.const 34)))
          (local.set $w2 (i32.add (local.get $w2) (i32.const 34))) (local.set $w3 (i32.add (local.get $w3) (i32.const 34)))
          (local.set $xb (i32.add (local.get $xb) (i32.const 64)))
          (local.set $sb (i32.add (local.get $sb) (i32.const 4)))
          (br $bl)))
        (local.set $o (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $outStride)) (local.get $r)) (i32.const 2))))
        (f32.store (local.get $o) (call $hsum (local.get $a0)))
        (f32.store offset=4 (local.get $o) (call $hsum (local.get $a1)))
        (f32.store offset=8 (local.get $o) (call $hsum (local.get $a2)))
        (f32.store offset=12 (local.get $o) (call $hsum (local.get $a3)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $tl)))
      (local.set $r (i32.add (local.get $r) (i32.const 4)))
      (br $rl))))

  ;; x[0..len) -> Q8_0 activations (llama.cpp's quantize_row_q8_0; test/reference.ts refQuantiseX): per block
  ;; of 32, s = max|x| / 127 and q = round(x * (127 / max|x|)), ties to even, in f64 as the reference does
  ;; (an f32 product can land on the other side of a tie); q held as i16 in xq, s in xs. len % 32 == 0.
  (func (export "quantise_q8") (param $x i32) (param $len i32) (param $xq i32) (param $xs i32)
    (local $end i32) (local $m v128) (local $inv v128) (local $mx f32) (local $o i32) (local $v v128) (local $a v128) (local $b v128)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $len) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (local.set $m (f32x4.max (f32x4.max (f32x4.abs (v128.load (local.get $x))) (f32x4.abs (v128.load offset=16 (local.get $x))))
                               (f32x4.max (f32x4.abs (v128.load offset=32 (local.get $x))) (f32x4.abs (v128.load offset=48 (local.get $x))))))
      (local.set $m (f32x4.max (local.get $m) (f32x4.max (f32x4.max (f32x4.abs (v128.load offset=64 (local.get $x))) (f32x4.abs (v128.load offset=80 (local.get $x))))
                               (f32x4.max (f32x4.abs (v128.load offset=96 (local.get $x))) (f32x4.abs (v128.load offset=112 (local.get $x)))))))
      (local.set $mx (f32.max (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
                              (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))
      (f32.store (local.get $xs) (f32.demote_f64 (f64.div (f64.promote_f32 (local.get $mx)) (f64.const 127))))
      (local.set $inv (f64x2.splat (if (result f64) (f32.gt (local.get $mx) (f32.const 0)) (then (f64.div (f64.const 127) (f64.promote_f32 (local.get $mx)))) (else (f64.const 0)))))
      ;; 4 floats at a time: two f64x2 products, rounded, truncated, the halves joined
      (local.set $o (i32.const 0))
      (block $qd (loop $ql
        (local.set $v (v128.load (i32.add (local.get $x) (local.get $o))))
        (local.set $a (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
          (i32x4.trunc_sat_f64x2_s_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4 (local.get $v)) (local.get $inv))))
          (i32x4.trunc_sat_f64x2_s_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4
            (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))) (local.get $inv))))))
        (local.set $v (v128.load offset=16 (i32.add (local.get $x) (local.get $o))))
        (local.set $b (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
          (i32x4.trunc_sat_f64x2_s_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4 (local.get $v)) (local.get $inv))))
          (i32x4.trunc_sat_f64x2_s_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4
            (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))) (local.get $inv))))))
        (v128.store (i32.add (local.get $xq) (i32.shr_u (local.get $o) (i32.const 1))) (i16x8.narrow_i32x4_s (local.get $a) (local.get $b)))
        (local.set $o (i32.add (local.get $o) (i32.const 32)))
        (br_if $ql (i32.lt_u (local.get $o) (i32.const 128)))))
      (local.set $x (i32.add (local.get $x) (i32.const 128)))
      (local.set $xq (i32.add (local.get $xq) (i32.const 64)))
      (local.set $xs (i32.add (local.get $xs) (i32.const 4)))
      (br $l))))

;; x[0..len) in place -> x as llama.cpp's Q8_0 / Q8_1 activations multiply (cpu/activations.ts, its
  ;; twin): per block of 32, q = x * (127 / max|x|) rounded to even in f64, times the scale max|x| / 127
  ;; rounded to f32 and then to f16 (as the block stores it). len % 32 == 0.
  (func (export "round_q8") (param $x i32) (param $len i32)
    (local $end i32) (local $m v128) (local $mx f32) (local $d f32) (local $b i32) (local $inv v128) (local $dv v128) (local $o i32) (local $v v128)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $len) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (local.set $m (f32x4.max (f32x4.max (f32x4.abs (v128.load (local.get $x))) (f32x4.abs (v128.load offset=16 (local.get $x))))
                               (f32x4.max (f32x4.abs (v128.load offset=32 (local.get $x))) (f32x4.abs (v128.load offset=48 (local.get $x))))))
      (local.set $m (f32x4.max (local.get $m) (f32x4.max (f32x4.max (f32x4.abs (v128.load offset=64 (local.get $x))) (f32x4.abs (v128.load offset=80 (local.get $x))))
                               (f32x4.max (f32x4.abs (v128.load offset=96 (local.get $x))) (f32x4.abs (v128.load offset=112 (local.get $x)))))))
      (local.set $mx (f32.max (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
                              (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))
      (local.set $d (f32.demote_f64 (f64.div (f64.promote_f32 (local.get $mx)) (f64.const 127))))
      ;; f32 -> f16 precision, nearest even: below f16's smallest normal (2^-14) a multiple of 2^-24, else 10
      ;; mantissa bits (the carry into the exponent is the right answer)
      (if (f32.lt (local.get $d) (f32.const 6.103515625e-05))
        (then (local.set $d (f32.mul (f32.nearest (f32.mul (local.get $d) (f32.const 16777216))) (f32.const 5.9604644775390625e-08))))
        (else
          (local.set $b (i32.reinterpret_f32 (local.get $d)))
          (local.set $d (f32.reinterpret_i32 (i32.and (i32.add (local.get $b) (i32.add (i32.const 0x0fff) (i32.and (i32.shr_u (local.get $b) (i32.const 13)) (i32.const 1))))
                                                      (i32.const 0xffffe000))))))
      (local.set $inv (f64x2.splat (if (result f64) (f32.gt (local.get $mx) (f32.const 0)) (then (f64.div (f64.const 127) (f64.promote_f32 (local.get $mx)))) (else (f64.const 0)))))
      (local.set $dv (f32x4.splat (local.get $d)))
      (local.set $o (i32.const 0))
      (block $qd (loop $ql
        (local.set $v (v128.load (i32.add (local.get $x) (local.get $o))))
        (v128.store (i32.add (local.get $x) (local.get $o)) (f32x4.mul (local.get $dv) (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23
          (f32x4.demote_f64x2_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4 (local.get $v)) (local.get $inv))))
          (f32x4.demote_f64x2_zero (f64x2.nearest (f64x2.mul (f64x2.promote_low_f32x4
            (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v))) (local.get $inv)))))))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br_if $ql (i32.lt_u (local.get $o) (i32.const 128)))))
      (local.set $x (i32.add (local.get $x) (i32.const 128)))
      (br $l))))

  ;; x[0..len) in place -> x as llama.cpp's Q8_K activations multiply (quantize_row_q8_K_ref; twin in
  ;; cpu/activations.ts): per block of 256, max = the first value of largest magnitude, iscale = -127 / max
  ;; and q = min(127, round(iscale * x)) in f32, times 1 / iscale. len % 256 == 0.
  (func (export "round_q8_k") (param $x i32) (param $len i32)
    (local $end i32) (local $m v128) (local $amax f32) (local $max f32) (local $is f32) (local $d v128) (local $s v128) (local $o i32) (local $p i32)
    (local.set $end (i32.add (local.get $x) (i32.shl (local.get $len) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $x) (local.get $end)))
      (local.set $m (v128.const f32x4 0 0 0 0))
      (local.set $o (i32.const 0))
      (block $md (loop $ml
        (local.set $m (f32x4.max (local.get $m) (f32x4.abs (v128.load (i32.add (local.get $x) (local.get $o))))))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br_if $ml (i32.lt_u (local.get $o) (i32.const 1024)))))
      (local.set $amax (f32.max (f32.max (f32x4.extract_lane 0 (local.get $m)) (f32x4.extract_lane 1 (local.get $m)))
                                (f32.max (f32x4.extract_lane 2 (local.get $m)) (f32x4.extract_lane 3 (local.get $m)))))
      ;; the signed value: the first element whose magnitude is the maximum
      (local.set $p (local.get $x))
      (block $fd (loop $fl
        (br_if $fd (i32.ge_u (local.get $p) (i32.add (local.get $x) (i32.const 1020)))) ;; (NaN: no element equals it)
        (br_if $fd (f32.eq (f32.abs (f32.load (local.get $p))) (local.get $amax)))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $fl)))
      (local.set $max (f32.load (local.get $p)))
      (if (f32.eq (local.get $amax) (f32.const 0))
        (then (local.set $s (v128.const f32x4 0 0 0 0)) (local.set $d (v128.const f32x4 0 0 0 0)))
        (else
          (local.set $is (f32.div (f32.const -127) (local.get $max)))
          (local.set $s (f32x4.splat (local.get $is)))
          (local.set $d (f32x4.splat (f32.div (f32.const 1) (local.get $is))))))
      (local.set $o (i32.const 0))
      (block $qd (loop $ql
        (local.set $p (i32.add (local.get $x) (local.get $o)))
        (v128.store (local.get $p) (f32x4.mul (local.get $d)
          (f32x4.min (f32x4.nearest (f32x4.mul (local.get $s) (v128.load (local.get $p)))) (v128.const f32x4 127 127 127 127))))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br_if $ql (i32.lt_u (local.get $o) (i32.const 1024)))))
      (local.set $x (i32.add (local.get $x) (i32.const 1024)))
      (br $l))))

  ;; Row quads for the prefill's integer products ("i16p"): rows in groups of 4; per group and block of 32
  ;; columns, 16 vectors (vector p = columns 2p, 2p+1 of rows 0..3 as i16 pairs: one i32x4.dot_i16x8_s
  ;; with x's pair splatted gives the 4 rows' partial sums, no transposes) then the 4 rows' f32 scales.
  ;; 272 bytes per group and block. $quadBlock stores one row's block (c0..c3: columns 0-7 .. 24-31 as i16).
  (func $quadBlock (param $c0 v128) (param $c1 v128) (param $c2 v128) (param $c3 v128) (param $dst i32)
    (v128.store32_lane offset=0 0 (local.get $dst) (local.get $c0)) (v128.store32_lane offset=16 1 (local.get $dst) (local.get $c0))
    (v128.store32_lane offset=32 2 (local.get $dst) (local.get $c0)) (v128.store32_lane offset=48 3 (local.get $dst) (local.get $c0))
    (v128.store32_lane offset=64 0 (local.get $dst) (local.get $c1)) (v128.store32_lane offset=80 1 (local.get $dst) (local.get $c1))
    (v128.store32_lane offset=96 2 (local.get $dst) (local.get $c1)) (v128.store32_lane offset=112 3 (local.get $dst) (local.get $c1))
    (v128.store32_lane offset=128 0 (local.get $dst) (local.get $c2)) (v128.store32_lane offset=144 1 (local.get $dst) (local.get $c2))
    (v128.store32_lane offset=160 2 (local.get $dst) (local.get $c2)) (v128.store32_lane offset=176 3 (local.get $dst) (local.get $c2))
    (v128.store32_lane offset=192 0 (local.get $dst) (local.get $c3)) (v128.store32_lane offset=208 1 (local.get $dst) (local.get $c3))
    (v128.store32_lane offset=224 2 (local.get $dst) (local.get $c3)) (v128.store32_lane offset=240 3 (local.get $dst) (local.get $c3)))

  ;; Q8_0 (kind 0) or Q4_0 (kind 1) rows [rows x cols] -> row quads at dst (rows % 4 == 0, cols % 32 == 0)
  (func (export "quads_from_q") (param $src i32) (param $rows i32) (param $cols i32) (param $dst i32) (param $kind i32)
    (local $nb i32) (local $r i32) (local $b i32) (local $blk i32) (local $o i32) (local $q v128) (local $lo v128) (local $hi v128)
    (local.set $nb (i32.shr_u (local.get $cols) (i32.const 5)))
    (local.set $blk (select (i32.const 18) (i32.const 34) (local.get $kind)))
    (local.set $r (i32.const 0))
    (block $rd (loop $rl
      (br_if $rd (i32.ge_s (local.get $r) (local.get $rows)))
      ;; this row's slot in its group: group (r / 4) * nb * 272 + lane (r % 4) * 4
      (local.set $o (i32.add (local.get $dst) (i32.add (i32.mul (i32.shr_u (local.get $r) (i32.const 2)) (i32.mul (local.get $nb) (i32.const 272)))
                                                        (i32.shl (i32.and (local.get $r) (i32.const 3)) (i32.const 2)))))
      (local.set $b (i32.const 0))
      (block $bd (loop $bl
        (br_if $bd (i32.ge_s (local.get $b) (local.get $nb)))
        (f32.store offset=256 (local.get $o) (f32x4.extract_lane 0 (call $h2f (i32x4.splat (i32.load16_u (local.get $src))))))
        (if (local.get $kind)
          (then
            (local.set $q (v128.load offset=2 (local.get $src)))
            (local.set $lo (i8x16.sub (v128.and (local.get $q) (i8x16.splat (i32.const 15))) (i8x16.splat (i32.const 8))))
            (local.set $hi (i8x16.sub (i8x16.shr_u (local.get $q) (i32.const 4)) (i8x16.splat (i32.const 8)))))
          (else
            (local.set $lo (v128.load offset=2 (local.get $src)))
            (local.set $hi (v128.load offset=18 (local.get $src)))))
        (call $quadBlock (i16x8.extend_low_i8x16_s (local.get $lo)) (i16x8.extend_high_i8x16_s (local.get $lo))
                         (i16x8.extend_low_i8x16_s (local.get $hi)) (i16x8.extend_high_i8x16_s (local.get $hi)) (local.get $o))
        (local.set $src (i32.add (local.get $src) (local.get $blk)))
        (local.set $o (i32.add (local.get $o) (i32.const 272)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (br $bl)))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rl))))

  ;; out[t*outStride + r] = W[r] . x[t] for r < rows (% 4 == 0), t < n: W as row quads (above), x as Q8_0
  ;; activations (quantise_q8). Tiles of 4 rows x 4 tokens: per column pair one weight vector serves the
  ;; 4 tokens, 4 integer dot products; per block of 32 one conversion and scale per tile row of 4 results.
  ;; A short last tile repeats its last token; only real tokens are stored.
  (func (export "gemm_quads") (param $w i32) (param $rows i32) (param $cols i32) (param $xq i32) (param $xs i32) (param $n i32) (param $out i32) (param $outStride i32)
    (local $nb i32) (local $gb i32) (local $t i32) (local $g i32) (local $wp i32) (local $wend i32) (local $pend i32) (local $xb i32)
    (local $x0 i32) (local $x1 i32) (local $x2 i32) (local $x3 i32) (local $s0 i32) (local $s1 i32) (local $s2 i32) (local $s3 i32) (local $xr i32)
    (local $i0 v128) (local $i1 v128) (local $i2 v128) (local $i3 v128) (local $f0 v128) (local $f1 v128) (local $f2 v128) (local $f3 v128)
    (local $v v128) (local $sc v128) (local $o i32)
    (local.set $nb (i32.shr_u (local.get $cols) (i32.const 5)))
    (local.set $gb (i32.mul (local.get $nb) (i32.const 272)))
    (local.set $xr (i32.shl (local.get $cols) (i32.const 1)))
    (local.set $t (i32.const 0))
    (block $td (loop $tl
      (br_if $td (i32.ge_s (local.get $t) (local.get $n)))
      ;; the tile's 4 tokens (clamped to the last)
      (local.set $x0 (i32.add (local.get $xq) (i32.mul (local.get $t) (local.get $xr))))
      (local.set $x1 (i32.add (local.get $xq) (i32.mul (select (i32.add (local.get $t) (i32.const 1)) (local.get $t) (i32.lt_s (i32.add (local.get $t) (i32.const 1)) (local.get $n))) (local.get $xr))))
      (local.set $x2 (i32.add (local.get $xq) (i32.mul (select (i32.add (local.get $t) (i32.const 2)) (local.get $t) (i32.lt_s (i32.add (local.get $t) (i32.const 2)) (local.get $n))) (local.get $xr))))
      (local.set $x3 (i32.add (local.get $xq) (i32.mul (select (i32.add (local.get $t) (i32.const 3)) (local.get $t) (i32.lt_s (i32.add (local.get $t) (i32.const 3)) (local.get $n))) (local.get $xr))))
      (local.set $g (i32.const 0))
      (block $gd (loop $gl
        (br_if $gd (i32.ge_s (local.get $g) (local.get $rows)))
        (local.set $wp (i32.add (local.get $w) (i32.mul (i32.shr_u (local.get $g) (i32.const 2)) (local.get $gb))))
        (local.set $wend (i32.add (local.get $wp) (local.get $gb)))
        (local.set $xb (i32.const 0))
        (local.set $s0 (i32.add (local.get $xs) (i32.shr_u (i32.sub (local.get $x0) (local.get $xq)) (i32.const 4))))
        (local.set $s1 (i32.add (local.get $xs) (i32.shr_u (i32.sub (local.get $x1) (local.get $xq)) (i32.const 4))))
        (local.set $s2 (i32.add (local.get $xs) (i32.shr_u (i32.sub (local.get $x2) (local.get $xq)) (i32.const 4))))
        (local.set $s3 (i32.add (local.get $xs) (i32.shr_u (i32.sub (local.get $x3) (local.get $xq)) (i32.const 4))))
        (local.set $f0 (v128.const i32x4 0 0 0 0)) (local.set $f1 (v128.const i32x4 0 0 0 0))
        (local.set $f2 (v128.const i32x4 0 0 0 0)) (local.set $f3 (v128.const i32x4 0 0 0 0))
        (block $bd (loop $bl
          (br_if $bd (i32.ge_u (local.get $wp) (local.get $wend)))
          (local.set $i0 (v128.const i32x4 0 0 0 0)) (local.set $i1 (v128.const i32x4 0 0 0 0))
          (local.set $i2 (v128.const i32x4 0 0 0 0)) (local.set $i3 (v128.const i32x4 0 0 0 0))
          (local.set $pend (i32.add (local.get $wp) (i32.const 256)))
          (block $pd (loop $pl
            (local.set $v (v128.load (local.get $wp)))
            (local.set $i0 (i32x4.add (local.get $i0) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat (i32.add (local.get $x0) (local.get $xb))))))
            (local.set $i1 (i32x4.add (local.get $i1) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat (i32.add (local.get $x1) (local.get $xb))))))
            (local.set $i2 (i32x4.add (local.get $i2) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat (i32.add (local.get $x2) (local.get $xb))))))
            (local.set $i3 (i32x4.add (local.get $i3) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat (i32.add (local.get $x3) (local.get $xb))))))
            (local.set $v (v128.load offset=16 (local.get $wp)))
            (local.set $i0 (i32x4.add (local.get $i0) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat offset=4 (i32.add (local.get $x0) (local.get $xb))))))
            (local.set $i1 (i32x4.add (local.get $i1) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat offset=4 (i32.add (local.get $x1) (local.get $xb))))))
            (local.set $i2 (i32x4.add (local.get $i2) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat offset=4 (i32.add (local.get $x2) (local.get $xb))))))
            (local.set $i3 (i32x4.add (local.get $i3) (i32x4.dot_i16x8_s (local.get $v) (v128.load32_splat offset=4 (i32.add (local.get $x3) (local.get $xb))))))
            (local.set $wp (i32.add (local.get $wp) (i32.const 32)))
            (local.set $xb (i32.add (local.get $xb) (i32.const 8)))
            (br_if $pl (i32.lt_u (local.get $wp) (local.get $pend)))))
          ;; the block's scales: the 4 rows' times each token's
          (local.set $sc (v128.load (local.get $wp)))
          (local.set $f0 (f32x4.add (local.get $f0) (f32x4.mul (f32x4.convert_i32x4_s (local.get $i0)) (f32x4.mul (local.get $sc) (v128.load32_splat (local.get $s0))))))
          (local.set $f1 (f32x4.add (local.get $f1) (f32x4.mul (f32x4.convert_i32x4_s (local.get $i1)) (f32x4.mul (local.get $sc) (v128.load32_splat (local.get $s1))))))
          (local.set $f2 (f32x4.add (local.get $f2) (f32x4.mul (f32x4.convert_i32x4_s (local.get $i2)) (f32x4.mul (local.get $sc) (v128.load32_splat (local.get $s2))))))
          (local.set $f3 (f32x4.add (local.get $f3) (f32x4.mul (f32x4.convert_i32x4_s (local.get $i3)) (f32x4.mul (local.get $sc) (v128.load32_splat (local.get $s3))))))
          (local.set $s0 (i32.add (local.get $s0) (i32.const 4))) (local.set $s1 (i32.add (local.get $s1) (i32.const 4)))
          (local.set $s2 (i32.add (local.get $s2) (i32.const 4))) (local.set $s3 (i32.add (local.get $s3) (i32.const 4)))
          (local.set $wp (i32.add (local.get $wp) (i32.const 16)))
          (br $bl)))
        (local.set $o (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $outStride)) (local.get $g)) (i32.const 2))))
        (v128.store (local.get $o) (local.get $f0))
        (if (i32.lt_s (i32.add (local.get $t) (i32.const 1)) (local.get $n)) (then (v128.store (i32.add (local.get $o) (i32.shl (local.get $outStride) (i32.const 2))) (local.get $f1))))
        (if (i32.lt_s (i32.add (local.get $t) (i32.const 2)) (local.get $n)) (then (v128.store (i32.add (local.get $o) (i32.shl (local.get $outStride) (i32.const 3))) (local.get $f2))))
        (if (i32.lt_s (i32.add (local.get $t) (i32.const 3)) (local.get $n)) (then (v128.store (i32.add (local.get $o) (i32.mul (local.get $outStride) (i32.const 12))) (local.get $f3))))
        (local.set $g (i32.add (local.get $g) (i32.const 4)))
        (br $gl)))
      (local.set $t (i32.add (local.get $t) (i32.const 4)))
      (br $tl))))

  ;; Q4_0 rows -> f32: blocks of 18 bytes (f16 scale, 16 bytes of nibbles: low = j, high = j + 16)
  (func (export "q4_0_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $d v128) (local $q v128) (local $lo v128) (local $hi v128) (local $x16 v128)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $h2f (i32x4.splat (i32.load16_u (local.get $src)))))
      (local.set $q (v128.load offset=2 (local.get $src)))
      (local.set $lo (i8x16.sub (v128.and (local.get $q) (i8x16.splat (i32.const 15))) (i8x16.splat (i32.const 8))))
      (local.set $hi (i8x16.sub (i8x16.shr_u (local.get $q) (i32.const 4)) (i8x16.splat (i32.const 8))))
      (local.set $x16 (i16x8.extend_low_i8x16_s (local.get $lo)))
      (v128.store (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))))
      (v128.store offset=16 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))))
      (local.set $x16 (i16x8.extend_high_i8x16_s (local.get $lo)))
      (v128.store offset=32 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))))
      (v128.store offset=48 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))))
      (local.set $x16 (i16x8.extend_low_i8x16_s (local.get $hi)))
      (v128.store offset=64 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))))
      (v128.store offset=80 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))))
      (local.set $x16 (i16x8.extend_high_i8x16_s (local.get $hi)))
      (v128.store offset=96 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))))
      (v128.store offset=112 (local.get $dst) (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))))
      (local.set $src (i32.add (local.get $src) (i32.const 18)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 128)))
      (br $l))))

;; ---- K-quants (llama.cpp's Q4_K / Q5_K / Q6_K, 256-element blocks; layouts in src/model/quants.ts)

  ;; dst[0..16) = d * q - m for the 16 signed byte lanes of q
  (func $bytes_to_f32 (param $q v128) (param $d v128) (param $m v128) (param $dst i32)
    (local $x16 v128)
    (local.set $x16 (i16x8.extend_low_i8x16_s (local.get $q)))
    (v128.store (local.get $dst) (f32x4.sub (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))) (local.get $m)))
    (v128.store offset=16 (local.get $dst) (f32x4.sub (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))) (local.get $m)))
    (local.set $x16 (i16x8.extend_high_i8x16_s (local.get $q)))
    (v128.store offset=32 (local.get $dst) (f32x4.sub (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_low_i16x8_s (local.get $x16)))) (local.get $m)))
    (v128.store offset=48 (local.get $dst) (f32x4.sub (f32x4.mul (local.get $d) (f32x4.convert_i32x4_s (i32x4.extend_high_i16x8_s (local.get $x16)))) (local.get $m))))

  ;; one f16 at p as f32
  (func $half (param $p i32) (result f32)
    (f32x4.extract_lane 0 (call $h2f (i32x4.splat (i32.load16_u (local.get $p))))))

  ;; Q4_K / Q5_K: the 6-bit scale (min = 0) or min (min = 1) of sub-block j from the 12 bytes at s
  (func $k4_scale (param $s i32) (param $j i32) (param $min i32) (result f32)
    (local $b i32)
    (if (result f32) (i32.lt_u (local.get $j) (i32.const 4))
      (then (f32.convert_i32_u (i32.and (i32.load8_u (i32.add (i32.add (local.get $s) (local.get $j)) (i32.shl (local.get $min) (i32.const 2)))) (i32.const 63))))
      (else
        (local.set $b (i32.load8_u (i32.add (i32.add (local.get $s) (local.get $j)) (i32.const 4))))
        (f32.convert_i32_u (i32.or
          (if (result i32) (local.get $min) (then (i32.shr_u (local.get $b) (i32.const 4))) (else (i32.and (local.get $b) (i32.const 15))))
          (i32.shl (i32.shr_u (i32.load8_u (i32.sub (i32.add (local.get $s) (local.get $j)) (i32.shl (i32.eqz (local.get $min)) (i32.const 2)))) (i32.const 6)) (i32.const 4)))))))

  ;; Q4_K (five = 0: 144-byte blocks d, dmin, scales[12], qs[128]) and Q5_K (five = 1: 176-byte blocks
  ;; with qh[32], the fifth bits, before qs) -> f32; n % 256 == 0
  (func $k45_to_f32 (param $src i32) (param $dst i32) (param $n i32) (param $five i32)
    (local $end i32) (local $d f32) (local $dm f32) (local $c i32) (local $k i32) (local $qs i32) (local $q v128) (local $h v128)
    (local $s1 v128) (local $m1 v128) (local $s2 v128) (local $m2 v128) (local $lo v128) (local $hi v128) (local $o i32)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $half (local.get $src)))
      (local.set $dm (call $half (i32.add (local.get $src) (i32.const 2))))
      (local.set $c (i32.const 0))
      (loop $chunks
        (local.set $s1 (f32x4.splat (f32.mul (local.get $d) (call $k4_scale (i32.add (local.get $src) (i32.const 4)) (i32.shl (local.get $c) (i32.const 1)) (i32.const 0)))))
        (local.set $m1 (f32x4.splat (f32.mul (local.get $dm) (call $k4_scale (i32.add (local.get $src) (i32.const 4)) (i32.shl (local.get $c) (i32.const 1)) (i32.const 1)))))
        (local.set $s2 (f32x4.splat (f32.mul (local.get $d) (call $k4_scale (i32.add (local.get $src) (i32.const 4)) (i32.add (i32.shl (local.get $c) (i32.const 1)) (i32.const 1)) (i32.const 0)))))
        (local.set $m2 (f32x4.splat (f32.mul (local.get $dm) (call $k4_scale (i32.add (local.get $src) (i32.const 4)) (i32.add (i32.shl (local.get $c) (i32.const 1)) (i32.const 1)) (i32.const 1)))))
        (local.set $qs (i32.add (i32.add (local.get $src) (select (i32.const 48) (i32.const 16) (local.get $five))) (i32.shl (local.get $c) (i32.const 5))))
        (local.set $k (i32.const 0))
        (loop $halves
          (local.set $q (v128.load (i32.add (local.get $qs) (local.get $k))))
          (local.set $lo (v128.and (local.get $q) (i8x16.splat (i32.const 15))))
          (local.set $hi (i8x16.shr_u (local.get $q) (i32.const 4)))
          (if (local.get $five) (then
            ;; fifth bits of elements 64c + l and 64c + 32 + l: bits 2c and 2c+1 of qh[l]
            (local.set $h (i8x16.shr_u (v128.load (i32.add (i32.add (local.get $src) (i32.const 16)) (local.get $k))) (i32.shl (local.get $c) (i32.const 1))))
            (local.set $lo (v128.or (local.get $lo) (i8x16.shl (v128.and (local.get $h) (i8x16.splat (i32.const 1))) (i32.const 4))))
            (local.set $hi (v128.or (local.get $hi) (i8x16.shl (v128.and (local.get $h) (i8x16.splat (i32.const 2))) (i32.const 3))))))
          (local.set $o (i32.add (local.get $dst) (i32.shl (i32.add (i32.shl (local.get $c) (i32.const 6)) (local.get $k)) (i32.const 2))))
          (call $bytes_to_f32 (local.get $lo) (local.get $s1) (local.get $m1) (local.get $o))
          (call $bytes_to_f32 (local.get $hi) (local.get $s2) (local.get $m2) (i32.add (local.get $o) (i32.const 128)))
          (local.set $k (i32.add (local.get $k) (i32.const 16)))
          (br_if $halves (i32.lt_u (local.get $k) (i32.const 32))))
        (local.set $c (i32.add (local.get $c) (i32.const 1)))
        (br_if $chunks (i32.lt_u (local.get $c) (i32.const 4))))
      (local.set $src (i32.add (local.get $src) (select (i32.const 176) (i32.const 144) (local.get $five))))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1024)))
      (br $blocks))))

  (func (export "q4_k_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (call $k45_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 0)))
  (func (export "q5_k_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (call $k45_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 1)))

  ;; Q6_K (210-byte blocks: ql[128], qh[64], int8 scales[16], d) -> f32; n % 256 == 0. Half c of a block:
  ;; element l (+32, +64, +96) takes the low (low, high, high) nibble of ql[64c + l] (ql[64c + 32 + l] for
  ;; +32 and +96) and bits 0-1 (2-3, 4-5, 6-7) of qh[32c + l], minus 32, times d * scale[8c + l/16 (+2, +4, +6)]
  (func (export "q6_k_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $d f32) (local $c i32) (local $k i32) (local $ql i32) (local $qh i32) (local $sc i32) (local $o i32)
    (local $a v128) (local $b v128) (local $h v128) (local $m3 v128) (local $m15 v128) (local $b32 v128) (local $zero v128)
    (local.set $m3 (i8x16.splat (i32.const 3))) (local.set $m15 (i8x16.splat (i32.const 15))) (local.set $b32 (i8x16.splat (i32.const 32)))
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $half (i32.add (local.get $src) (i32.const 208))))
      (local.set $c (i32.const 0))
      (loop $halves
        (local.set $ql (i32.add (local.get $src) (i32.shl (local.get $c) (i32.const 6))))
        (local.set $qh (i32.add (i32.add (local.get $src) (i32.const 128)) (i32.shl (local.get $c) (i32.const 5))))
        (local.set $k (i32.const 0))
        (loop $groups
          (local.set $sc (i32.add (i32.add (i32.add (local.get $src) (i32.const 192)) (i32.shl (local.get $c) (i32.const 3))) (i32.shr_u (local.get $k) (i32.const 4))))
          (local.set $a (v128.load (i32.add (local.get $ql) (local.get $k))))
          (local.set $b (v128.load offset=32 (i32.add (local.get $ql) (local.get $k))))
          (local.set $h (v128.load (i32.add (local.get $qh) (local.get $k))))
          (local.set $o (i32.add (local.get $dst) (i32.shl (i32.add (i32.shl (local.get $c) (i32.const 7)) (local.get $k)) (i32.const 2))))
          (call $bytes_to_f32
            (i8x16.sub (v128.or (v128.and (local.get $a) (local.get $m15)) (i8x16.shl (v128.and (local.get $h) (local.get $m3)) (i32.const 4))) (local.get $b32))
            (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_s (i32.load8_s (local.get $sc))))) (local.get $zero) (local.get $o))
          (call $bytes_to_f32
            (i8x16.sub (v128.or (v128.and (local.get $b) (local.get $m15)) (i8x16.shl (v128.and (i8x16.shr_u (local.get $h) (i32.const 2)) (local.get $m3)) (i32.const 4))) (local.get $b32))
            (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_s (i32.load8_s offset=2 (local.get $sc))))) (local.get $zero) (i32.add (local.get $o) (i32.const 128)))
          (call $bytes_to_f32
            (i8x16.sub (v128.or (i8x16.shr_u (local.get $a) (i32.const 4)) (i8x16.shl (v128.and (i8x16.shr_u (local.get $h) (i32.const 4)) (local.get $m3)) (i32.const 4))) (local.get $b32))
            (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_s (i32.load8_s offset=4 (local.get $sc))))) (local.get $zero) (i32.add (local.get $o) (i32.const 256)))
          (call $bytes_to_f32
            (i8x16.sub (v128.or (i8x16.shr_u (local.get $b) (i32.const 4)) (i8x16.shl (i8x16.shr_u (local.get $h) (i32.const 6)) (i32.const 4))) (local.get $b32))
            (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_s (i32.load8_s offset=6 (local.get $sc))))) (local.get $zero) (i32.add (local.get $o) (i32.const 384)))
          (local.set $k (i32.add (local.get $k) (i32.const 16)))
          (br_if $groups (i32.lt_u (local.get $k) (i32.const 32))))
        (local.set $c (i32.add (local.get $c) (i32.const 1)))
        (br_if $halves (i32.lt_u (local.get $c) (i32.const 2))))
      (local.set $src (i32.add (local.get $src) (i32.const 210)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1024)))
      (br $blocks))))

;; ---- the other 32-element formats (Q4_1, Q5_0, Q5_1, IQ4_NL) and IQ4_XS, Q2_K, Q3_K

  ;; IQ4_NL / IQ4_XS levels, looked up by a byte swizzle
  (global $iq4 v128 (v128.const i8x16 -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113))

  ;; 16 bytes, byte j = 16 if bit j of the 16-bit value v is set, else 0 (the fifth bits of Q5_0 / Q5_1)
  (func $bits16 (param $v i32) (result v128)
    (local $m v128)
    (local.set $m (v128.const i8x16 1 2 4 8 16 32 64 -128 1 2 4 8 16 32 64 -128))
    (v128.and (i8x16.eq (v128.and (i8x16.swizzle (i32x4.splat (local.get $v)) (v128.const i8x16 0 0 0 0 0 0 0 0 1 1 1 1 1 1 1 1)) (local.get $m)) (local.get $m))
      (i8x16.splat (i32.const 16))))

  ;; 32-element blocks of kind 0 Q4_1 (d, m, qs[16]: 20 bytes), 1 Q5_0 (d, qh, qs: 22), 2 Q5_1 (d, m, qh,
  ;; qs: 24), 3 IQ4_NL (d, qs: 18) -> f32: element j is the low nibble of qs[j], element j+16 the high one
  (func $q32_to_f32 (param $src i32) (param $dst i32) (param $n i32) (param $kind i32)
    (local $end i32) (local $d v128) (local $m v128) (local $q v128) (local $lo v128) (local $hi v128) (local $qs i32) (local $qh i32)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (f32x4.splat (call $half (local.get $src))))
      ;; the offset subtracted: -m for Q4_1 / Q5_1, 16 d for Q5_0, 0 for IQ4_NL
      (local.set $m (if (result v128) (i32.eq (local.get $kind) (i32.const 1))
        (then (f32x4.mul (local.get $d) (f32x4.splat (f32.const 16))))
        (else (if (result v128) (i32.eq (local.get $kind) (i32.const 3)) (then (v128.const i32x4 0 0 0 0))
          (else (f32x4.neg (f32x4.splat (call $half (i32.add (local.get $src) (i32.const 2))))))))))
      ;; qs after d (2), m (2) and qh (4) where the kind has them
      (local.set $qs (i32.add (local.get $src) (select (i32.const 2) (select (i32.const 8) (select (i32.const 6) (i32.const 4) (i32.eq (local.get $kind) (i32.const 1)))
        (i32.eq (local.get $kind) (i32.const 2))) (i32.eq (local.get $kind) (i32.const 3)))))
      (local.set $q (v128.load (local.get $qs)))
      (local.set $lo (v128.and (local.get $q) (i8x16.splat (i32.const 15))))
      (local.set $hi (i8x16.shr_u (local.get $q) (i32.const 4)))
      (if (i32.eq (local.get $kind) (i32.const 3)) (then
        (local.set $lo (i8x16.swizzle (global.get $iq4) (local.get $lo)))
        (local.set $hi (i8x16.swizzle (global.get $iq4) (local.get $hi)))))
      (if (i32.or (i32.eq (local.get $kind) (i32.const 1)) (i32.eq (local.get $kind) (i32.const 2))) (then
        (local.set $qh (i32.load (i32.sub (local.get $qs) (i32.const 4))))
        (local.set $lo (v128.or (local.get $lo) (call $bits16 (local.get $qh))))
        (local.set $hi (v128.or (local.get $hi) (call $bits16 (i32.shr_u (local.get $qh) (i32.const 16)))))))
      (call $bytes_to_f32 (local.get $lo) (local.get $d) (local.get $m) (local.get $dst))
      (call $bytes_to_f32 (local.get $hi) (local.get $d) (local.get $m) (i32.add (local.get $dst) (i32.const 64)))
      (local.set $src (i32.add (local.get $qs) (i32.const 16)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 128)))
      (br $l))))

  (func (export "q4_1_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $q32_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 0)))
  (func (export "q5_0_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $q32_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 1)))
  (func (export "q5_1_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $q32_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 2)))
  (func (export "iq4_nl_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $q32_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 3)))

  ;; IQ4_XS (136-byte blocks: d, scales_h (u16), scales_l[4], qs[128]) -> f32; n % 256 == 0
  (func (export "iq4_xs_to_f32") (param $src i32) (param $dst i32) (param $n i32)
    (local $end i32) (local $d f32) (local $sb i32) (local $ls i32) (local $dl v128) (local $q v128) (local $zero v128)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $half (local.get $src)))
      (local.set $sb (i32.const 0))
      (loop $subs
        (local.set $ls (i32.or
          (i32.and (i32.shr_u (i32.load8_u (i32.add (i32.add (local.get $src) (i32.const 4)) (i32.shr_u (local.get $sb) (i32.const 1))))
                              (i32.shl (i32.and (local.get $sb) (i32.const 1)) (i32.const 2))) (i32.const 15))
          (i32.shl (i32.and (i32.shr_u (i32.load16_u offset=2 (local.get $src)) (i32.shl (local.get $sb) (i32.const 1))) (i32.const 3)) (i32.const 4))))
        (local.set $dl (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_s (i32.sub (local.get $ls) (i32.const 32))))))
        (local.set $q (v128.load offset=8 (i32.add (local.get $src) (i32.shl (local.get $sb) (i32.const 4)))))
        (call $bytes_to_f32 (i8x16.swizzle (global.get $iq4) (v128.and (local.get $q) (i8x16.splat (i32.const 15)))) (local.get $dl) (local.get $zero)
          (i32.add (local.get $dst) (i32.shl (local.get $sb) (i32.const 7))))
        (call $bytes_to_f32 (i8x16.swizzle (global.get $iq4) (i8x16.shr_u (local.get $q) (i32.const 4))) (local.get $dl) (local.get $zero)
          (i32.add (i32.add (local.get $dst) (i32.shl (local.get $sb) (i32.const 7))) (i32.const 64)))
        (local.set $sb (i32.add (local.get $sb) (i32.const 1)))
        (br_if $subs (i32.lt_u (local.get $sb) (i32.const 8))))
      (local.set $src (i32.add (local.get $src) (i32.const 136)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1024)))
      (br $blocks))))

  ;; Q3_K's signed 6-bit scale i from the 12 bytes at s: low nibble from byte i (i < 8) or the high one of
  ;; byte i - 8, top two bits from byte 8 + i%4 at bits 2*(i/4)
  (func $q3_scale (param $s i32) (param $i i32) (result f32)
    (f32.convert_i32_s (i32.sub (i32.or
      (if (result i32) (i32.lt_u (local.get $i) (i32.const 8))
        (then (i32.and (i32.load8_u (i32.add (local.get $s) (local.get $i))) (i32.const 15)))
        (else (i32.shr_u (i32.load8_u (i32.sub (i32.add (local.get $s) (local.get $i)) (i32.const 8))) (i32.const 4))))
      (i32.shl (i32.and (i32.shr_u (i32.load8_u (i32.add (i32.add (local.get $s) (i32.const 8)) (i32.and (local.get $i) (i32.const 3))))
                                   (i32.shl (i32.shr_u (local.get $i) (i32.const 2)) (i32.const 1))) (i32.const 3)) (i32.const 4)))
      (i32.const 32))))

  ;; Q2_K (three = 0; 84-byte blocks scales[16], qs[64], d, dmin) and Q3_K (three = 1; 110-byte blocks
  ;; hmask[32], qs[64], scales[12], d) -> f32; n % 256 == 0. Element 128c + 32s + 16h + l: bits 2s of
  ;; qs[32c + 16h + l], scale 8c + 2s + h; Q3_K subtracts 4 unless bit 4c + s of hmask[16h + l] is set.
  (func $k23_to_f32 (param $src i32) (param $dst i32) (param $n i32) (param $three i32)
    (local $end i32) (local $d f32) (local $dm f32) (local $c i32) (local $sh i32) (local $h i32) (local $i i32) (local $sc i32)
    (local $q v128) (local $scale v128) (local $min v128) (local $qs i32)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $blocks
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (local.set $d (call $half (i32.add (local.get $src) (select (i32.const 108) (i32.const 80) (local.get $three)))))
      (local.set $dm (call $half (i32.add (local.get $src) (i32.const 82))))
      (local.set $qs (i32.add (local.get $src) (select (i32.const 32) (i32.const 16) (local.get $three))))
      (local.set $i (i32.const 0))
      (loop $subs
        ;; i = 8c + 2s + h
        (local.set $c (i32.shr_u (local.get $i) (i32.const 3)))
        (local.set $sh (i32.and (i32.shr_u (local.get $i) (i32.const 1)) (i32.const 3)))
        (local.set $h (i32.and (local.get $i) (i32.const 1)))
        (local.set $q (v128.and (i8x16.shr_u (v128.load (i32.add (local.get $qs) (i32.add (i32.shl (local.get $c) (i32.const 5)) (i32.shl (local.get $h) (i32.const 4)))))
                                             (i32.shl (local.get $sh) (i32.const 1))) (i8x16.splat (i32.const 3))))
        (if (local.get $three)
          (then
            (local.set $q (i8x16.sub (v128.or (local.get $q) (i8x16.shl (v128.and (i8x16.shr_u (v128.load (i32.add (local.get $src) (i32.shl (local.get $h) (i32.const 4))))
                                                                                               (i32.add (i32.shl (local.get $c) (i32.const 2)) (local.get $sh))) (i8x16.splat (i32.const 1))) (i32.const 2)))
                                     (i8x16.splat (i32.const 4))))
            (local.set $scale (f32x4.splat (f32.mul (local.get $d) (call $q3_scale (i32.add (local.get $src) (i32.const 96)) (local.get $i)))))
            (local.set $min (v128.const i32x4 0 0 0 0)))
          (else
            (local.set $sc (i32.load8_u (i32.add (local.get $src) (local.get $i))))
            (local.set $scale (f32x4.splat (f32.mul (local.get $d) (f32.convert_i32_u (i32.and (local.get $sc) (i32.const 15))))))
            (local.set $min (f32x4.splat (f32.mul (local.get $dm) (f32.convert_i32_u (i32.shr_u (local.get $sc) (i32.const 4))))))))
        (call $bytes_to_f32 (local.get $q) (local.get $scale) (local.get $min) (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 6))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $subs (i32.lt_u (local.get $i) (i32.const 16))))
      (local.set $src (i32.add (local.get $src) (select (i32.const 110) (i32.const 84) (local.get $three))))
      (local.set $dst (i32.add (local.get $dst) (i32.const 1024)))
      (br $blocks))))

  (func (export "q2_k_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $k23_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 0)))
  (func (export "q3_k_to_f32") (param $src i32) (param $dst i32) (param $n i32) (call $k23_to_f32 (local.get $src) (local.get $dst) (local.get $n) (i32.const 1)))

  ;; exp of 4 lanes (Cephes expf: x = k ln2 + r, polynomial for e^r, 2^k through the exponent bits)
  (func $exp4 (param $x v128) (result v128)
    (local $k v128) (local $r v128) (local $p v128)
    (local.set $x (f32x4.max (f32x4.min (local.get $x) (f32x4.splat (f32.const 88.3762626647949))) (f32x4.splat (f32.const -87.3))))
    (local.set $k (f32x4.nearest (f32x4.mul (local.get $x) (f32x4.splat (f32.const 1.44269504088896341)))))
    (local.set $r (f32x4.sub (f32x4.sub (local.get $x) (f32x4.mul (local.get $k) (f32x4.splat (f32.const 0.693359375))))
                             (f32x4.mul (local.get $k) (f32x4.splat (f32.const -2.12194440e-4)))))
    (local.set $p (f32x4.splat (f32.const 1.9875691500E-4)))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (f32x4.splat (f32.const 1.3981999507E-3))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (f32x4.splat (f32.const 8.3334519073E-3))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (f32x4.splat (f32.const 4.1665795894E-2))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (f32x4.splat (f32.const 1.6666665459E-1))))
    (local.set $p (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (f32x4.splat (f32.const 5.0000001201E-1))))
    (local.set $p (f32x4.add (f32x4.add (f32x4.mul (f32x4.mul (local.get $p) (local.get $r)) (local.get $r)) (local.get $r)) (f32x4.splat (f32.const 1))))
    (f32x4.mul (local.get $p)
      (i32x4.shl (i32x4.add (i32x4.trunc_sat_f32x4_s (local.get $k)) (i32x4.splat (i32.const 127))) (i32.const 23))))

;; Attention of nq query heads that share one KV head (a GQA group, or one head) over n tokens of a paged
  ;; cache; each key and value row is read from memory once for all nq heads.
  ;;   q, out: nq consecutive rows of hd f32
  ;;   tokens: pointer to n i32 token ids, or 0 for tokens 0..n-1
  ;;   token t's key is at kBase + table[t / P] * pageStride + (t % P) * hd * 4 (likewise vBase): table maps
  ;;   the sequence's logical pages to physical ones (int32 each)
  ;;   bf16 = 1: keys and values are bf16 (rows of hd * 2 bytes), widened to f32 as they are loaded (a shift)
  ;;   probs: nq + 1 rows of n4 = n rounded up to 4 f32: rows 0..nq-1 receive each head's softmax weights,
  ;;   the last is scratch (each token's row offset)
  (func (export "attend") (param $q i32) (param $nq i32) (param $kBase i32) (param $vBase i32) (param $table i32) (param $pageStride i32) (param $P i32) (param $hd i32)
                          (param $tokens i32) (param $n i32) (param $scale f32) (param $probs i32) (param $out i32) (param $bf16 i32)
    (local $rb i32) (local $dh i32)
    (local $i i32) (local $j i32) (local $t i32) (local $offs i32) (local $sum v128) (local $m4 v128)
    (local $e v128) (local $inv v128) (local $d i32) (local $p v128) (local $hb i32) (local $n4 i32) (local $vo i32)
    (local $row i32) (local $o i32) (local $end i32) (local $k0 i32) (local $k1 i32) (local $k2 i32) (local $k3 i32) (local $qp i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $shift i32) (local $mask i32) (local $pow2 i32)
    (local.set $hb (i32.shl (local.get $hd) (i32.const 2)))
    (local.set $rb (i32.shl (local.get $hd) (select (i32.const 1) (i32.const 2) (local.get $bf16)))) ;; bytes of a key or value row
    (local.set $n4 (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)))
    (local.set $offs (i32.add (local.get $probs) (i32.shl (i32.mul (local.get $nq) (local.get $n4)) (i32.const 2))))
    ;; each token's row offset, once (a power-of-two page size, the usual case, by shift and mask: a
    ;; division per key costs more than its dot product); padding repeats token 0
    (local.set $pow2 (i32.eqz (i32.and (local.get $P) (i32.sub (local.get $P) (i32.const 1)))))
    (local.set $shift (i32.ctz (local.get $P)))
    (local.set $mask (i32.sub (local.get $P) (i32.const 1)))
    (local.set $i (i32.const 0))
    (block $od (loop $ol
      (br_if $od (i32.ge_s (local.get $i) (local.get $n4)))
      (local.set $t (if (result i32) (i32.ge_s (local.get $i) (local.get $n)) (then (i32.const 0))
                      (else (if (result i32) (i32.eqz (local.get $tokens)) (then (local.get $i))
                        (else (i32.load (i32.add (local.get $tokens) (i32.shl (local.get $i) (i32.const 2)))))))))
      (i32.store (i32.add (local.get $offs) (i32.shl (local.get $i) (i32.const 2)))
        (if (result i32) (local.get $pow2)
          (then (i32.add (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (i32.shr_u (local.get $t) (local.get $shift)) (i32.const 2)))) (local.get $pageStride))
                         (i32.mul (i32.and (local.get $t) (local.get $mask)) (local.get $rb))))
          (else (i32.add (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (i32.div_u (local.get $t) (local.get $P)) (i32.const 2)))) (local.get $pageStride))
                         (i32.mul (i32.rem_u (local.get $t) (local.get $P)) (local.get $rb))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $ol)))
    ;; scores, four keys at a time (their rows stay in the cache for every head of the group): each
    ;; 4-float slice of q is loaded once for the four keys, and the four sums are added across lanes together
    (local.set $i (i32.const 0))
    (block $sd (loop $sl
      (br_if $sd (i32.ge_s (local.get $i) (local.get $n)))
      (local.set $o (i32.add (local.get $offs) (i32.shl (local.get $i) (i32.const 2))))
      (local.set $k0 (i32.add (local.get $kBase) (i32.load (local.get $o))))
      (local.set $k1 (i32.add (local.get $kBase) (i32.load offset=4 (local.get $o))))
      (local.set $k2 (i32.add (local.get $kBase) (i32.load offset=8 (local.get $o))))
      (local.set $k3 (i32.add (local.get $kBase) (i32.load offset=12 (local.get $o))))
      (local.set $j (i32.const 0))
      (block $hd_ (loop $hl
        (br_if $hd_ (i32.ge_s (local.get $j) (local.get $nq)))
        (local.set $qp (i32.add (local.get $q) (i32.mul (local.get $j) (local.get $hb))))
        (local.set $a0 (v128.const i32x4 0 0 0 0)) (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0)) (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $d (i32.const 0))
        (if (local.get $bf16) (then
        (block $dd2 (loop $dl2
          (br_if $dd2 (i32.ge_s (local.get $d) (local.get $hb)))
          (local.set $p (v128.load (i32.add (local.get $qp) (local.get $d))))
          (local.set $dh (i32.shr_u (local.get $d) (i32.const 1)))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u (i32.add (local.get $k0) (local.get $dh))) (i32.const 16)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u (i32.add (local.get $k1) (local.get $dh))) (i32.const 16)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u (i32.add (local.get $k2) (local.get $dh))) (i32.const 16)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u (i32.add (local.get $k3) (local.get $dh))) (i32.const 16)))))
          (local.set $d (i32.add (local.get $d) (i32.const 16)))
          (br $dl2))))
        (else
        (block $dd (loop $dl
          (br_if $dd (i32.ge_s (local.get $d) (local.get $hb)))
          (local.set $p (v128.load (i32.add (local.get $qp) (local.get $d))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $k0) (local.get $d))))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $k1) (local.get $d))))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $k2) (local.get $d))))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $k3) (local.get $d))))))
          (local.set $d (i32.add (local.get $d) (i32.const 16)))
          (br $dl)))))
        ;; lane sums of a0..a3 as one vector (s0, s1, s2, s3)
        (local.set $a0 (f32x4.add (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0) (local.get $a1))
                                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0) (local.get $a1))))
        (local.set $a2 (f32x4.add (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a2) (local.get $a3))
                                  (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a2) (local.get $a3))))
        (local.set $a0 (f32x4.add (i8x16.shuffle 0 1 2 3 8 9 10 11 16 17 18 19 24 25 26 27 (local.get $a0) (local.get $a2))
                                  (i8x16.shuffle 4 5 6 7 12 13 14 15 20 21 22 23 28 29 30 31 (local.get $a0) (local.get $a2))))
        (v128.store (i32.add (local.get $probs) (i32.shl (i32.add (i32.mul (local.get $j) (local.get $n4)) (local.get $i)) (i32.const 2)))
          (f32x4.mul (local.get $a0) (f32x4.splat (local.get $scale))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $hl)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $sl)))
    ;; per head: pad to n4 with -inf, max, exp, sum, normalise (in place)
    (local.set $j (i32.const 0))
    (block $nd (loop $nl
      (br_if $nd (i32.ge_s (local.get $j) (local.get $nq)))
      (local.set $row (i32.add (local.get $probs) (i32.shl (i32.mul (local.get $j) (local.get $n4)) (i32.const 2))))
      (local.set $end (i32.add (local.get $row) (i32.shl (local.get $n4) (i32.const 2))))
      (local.set $i (local.get $n))
      (block $pd (loop $pl
        (br_if $pd (i32.ge_s (local.get $i) (local.get $n4)))
        (f32.store (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 2))) (f32.const -inf))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $pl)))
      (local.set $m4 (f32x4.splat (f32.const -inf)))
      (local.set $o (local.get $row))
      (block $md (loop $ml
        (br_if $md (i32.ge_u (local.get $o) (local.get $end)))
        (local.set $m4 (f32x4.max (local.get $m4) (v128.load (local.get $o))))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br $ml)))
      (local.set $m4 (f32x4.max (local.get $m4) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $m4) (local.get $m4))))
      (local.set $m4 (f32x4.max (local.get $m4) (i8x16.shuffle 4 5 6 7 0 1 2 3 12 13 14 15 8 9 10 11 (local.get $m4) (local.get $m4))))
      (local.set $sum (v128.const i32x4 0 0 0 0))
      (local.set $o (local.get $row))
      (block $ed (loop $el
        (br_if $ed (i32.ge_u (local.get $o) (local.get $end)))
        ;; weights under e^-46 of the largest are dropped (set to 0; padding, at -inf, too): they change
        ;; nothing, and left in they become subnormal floats after the division and in the products
        ;; with v, which x86 computes at ~100x the cost
        (local.set $e (f32x4.sub (v128.load (local.get $o)) (local.get $m4)))
        (local.set $e (v128.and (call $exp4 (f32x4.max (local.get $e) (f32x4.splat (f32.const -46))))
                                (f32x4.gt (local.get $e) (f32x4.splat (f32.const -46)))))
        (v128.store (local.get $o) (local.get $e))
        (local.set $sum (f32x4.add (local.get $sum) (local.get $e)))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br $el)))
      (local.set $inv (f32x4.splat (f32.div (f32.const 1) (call $hsum (local.get $sum)))))
      (local.set $o (local.get $row))
      (block $vd (loop $vl
        (br_if $vd (i32.ge_u (local.get $o) (local.get $end)))
        (v128.store (local.get $o) (f32x4.mul (v128.load (local.get $o)) (local.get $inv)))
        (local.set $o (i32.add (local.get $o) (i32.const 16)))
        (br $vl)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $nl)))
    ;; out_j = sum_i p_ji v_i over blocks of 128 tokens: a block's value rows (up to 64 KB) stay in L2 while
    ;; every head of the group and every 16-column slice passes over them (unblocked, a long context's
    ;; values were streamed from memory once per head and slice); 16 columns at a time in registers,
    ;; then 4-column slices where hd is not a multiple of 16
    (local.set $o (local.get $out))
    (local.set $end (i32.add (local.get $out) (i32.mul (local.get $nq) (local.get $hb))))
    (block $zd (loop $zl
      (br_if $zd (i32.ge_u (local.get $o) (local.get $end)))
      (v128.store (local.get $o) (v128.const i32x4 0 0 0 0))
      (local.set $o (i32.add (local.get $o) (i32.const 16)))
      (br $zl)))
    (local.set $t (i32.const 0))
    (block $td (loop $tl
      (br_if $td (i32.ge_s (local.get $t) (local.get $n)))
      (local.set $k0 (select (i32.add (local.get $t) (i32.const 128)) (local.get $n)
                             (i32.lt_s (i32.add (local.get $t) (i32.const 128)) (local.get $n)))) ;; block end
    (local.set $j (i32.const 0))
    (block $jd (loop $jl
      (br_if $jd (i32.ge_s (local.get $j) (local.get $nq)))
      (local.set $row (i32.add (local.get $probs) (i32.shl (i32.mul (local.get $j) (local.get $n4)) (i32.const 2))))
      (local.set $d (i32.const 0))
      (block $cd (loop $cl
        (br_if $cd (i32.gt_s (i32.add (local.get $d) (i32.const 64)) (local.get $hb)))
        (local.set $k1 (i32.add (i32.add (local.get $out) (i32.mul (local.get $j) (local.get $hb))) (local.get $d)))
        (local.set $a0 (v128.load (local.get $k1))) (local.set $a1 (v128.load offset=16 (local.get $k1)))
        (local.set $a2 (v128.load offset=32 (local.get $k1))) (local.set $a3 (v128.load offset=48 (local.get $k1)))
        (local.set $i (local.get $t))
        (if (local.get $bf16) (then
        (local.set $vo (i32.add (local.get $vBase) (i32.shr_u (local.get $d) (i32.const 1))))
        (block $ad2 (loop $al2
          (br_if $ad2 (i32.ge_s (local.get $i) (local.get $k0)))
          (local.set $o (i32.add (local.get $vo) (i32.load (i32.add (local.get $offs) (i32.shl (local.get $i) (i32.const 2))))))
          (local.set $p (v128.load32_splat (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 2)))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u (local.get $o)) (i32.const 16)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u offset=8 (local.get $o)) (i32.const 16)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u offset=16 (local.get $o)) (i32.const 16)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $p) (i32x4.shl (v128.load16x4_u offset=24 (local.get $o)) (i32.const 16)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $al2))))
        (else
        (local.set $vo (i32.add (local.get $vBase) (local.get $d)))
        (block $ad (loop $al
          (br_if $ad (i32.ge_s (local.get $i) (local.get $k0)))
          (local.set $o (i32.add (local.get $vo) (i32.load (i32.add (local.get $offs) (i32.shl (local.get $i) (i32.const 2))))))
          (local.set $p (v128.load32_splat (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 2)))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $p) (v128.load (local.get $o)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $p) (v128.load offset=16 (local.get $o)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $p) (v128.load offset=32 (local.get $o)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $p) (v128.load offset=48 (local.get $o)))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $al)))))
        (v128.store (local.get $k1) (local.get $a0)) (v128.store offset=16 (local.get $k1) (local.get $a1))
        (v128.store offset=32 (local.get $k1) (local.get $a2)) (v128.store offset=48 (local.get $k1) (local.get $a3))
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (br $cl)))
      (block $rd (loop $rl
        (br_if $rd (i32.ge_s (local.get $d) (local.get $hb)))
        (local.set $k1 (i32.add (i32.add (local.get $out) (i32.mul (local.get $j) (local.get $hb))) (local.get $d)))
        (local.set $a0 (v128.load (local.get $k1)))
        (local.set $vo (i32.add (local.get $vBase) (i32.shr_u (local.get $d) (local.get $bf16)))) ;; (bf16 rows: half the bytes)
        (local.set $i (local.get $t))
        (block $bd (loop $bl
          (br_if $bd (i32.ge_s (local.get $i) (local.get $k0)))
          (local.set $o (i32.add (local.get $vo) (i32.load (i32.add (local.get $offs) (i32.shl (local.get $i) (i32.const 2))))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load32_splat (i32.add (local.get $row) (i32.shl (local.get $i) (i32.const 2))))
            (if (result v128) (local.get $bf16) (then (i32x4.shl (v128.load16x4_u (local.get $o)) (i32.const 16))) (else (v128.load (local.get $o)))))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $bl)))
        (v128.store (local.get $k1) (local.get $a0))
        (local.set $d (i32.add (local.get $d) (i32.const 16)))
        (br $rl)))
      (local.set $j (i32.add (local.get $j) (i32.const 1)))
      (br $jl)))
      (local.set $t (local.get $k0))
      (br $tl))))
;; gate[i] = act(gate[i]) * up[i], i < n (n % 4 == 0): act 0 = SiLU g / (1 + e^-g); 1 = GELU in its tanh
  ;; form, 0.5 g (1 + tanh u) = g / (1 + e^-2u), u = 0.79788456 (g + 0.044715 g^3)
  (func (export "glu") (param $gate i32) (param $up i32) (param $n i32) (param $act i32)
    (local $end i32) (local $g v128) (local $z v128)
    (local.set $end (i32.add (local.get $gate) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $gate) (local.get $end)))
      (local.set $g (v128.load (local.get $gate)))
      (local.set $z (if (result v128) (local.get $act)
        (then (f32x4.mul (f32x4.mul (local.get $g) (f32x4.splat (f32.const -1.5957691216057308)))
                         (f32x4.add (f32x4.splat (f32.const 1)) (f32x4.mul (f32x4.splat (f32.const 0.044715)) (f32x4.mul (local.get $g) (local.get $g))))))
        (else (f32x4.neg (local.get $g)))))
      (v128.store (local.get $gate) (f32x4.mul (f32x4.div (local.get $g) (f32x4.add (f32x4.splat (f32.const 1)) (call $exp4 (local.get $z))))
                                              (v128.load (local.get $up))))
      (local.set $gate (i32.add (local.get $gate) (i32.const 16)))
      (local.set $up (i32.add (local.get $up) (i32.const 16)))
      (br $l))))
;; dst[i] += src[i] for i < n (n padded to a multiple of 4 by the caller's buffers)
  (func (export "accumulate") (param $dst i32) (param $src i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $dst) (i32.shl (local.get $n) (i32.const 2))))
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $dst) (local.get $end)))
      (v128.store (local.get $dst) (f32x4.add (v128.load (local.get $dst)) (v128.load (local.get $src))))
      (local.set $dst (i32.add (local.get $dst) (i32.const 16)))
      (local.set $src (i32.add (local.get $src) (i32.const 16)))
      (br $l))))
;; out[t*outStride + r] = W[r] . x[t]; W f16 [rows x cols] converted in registers (decode: no scratch pass)
  (func (export "gemm_f16") (param $w i32) (param $rows i32) (param $cols i32) (param $x i32) (param $n i32) (param $out i32) (param $outStride i32)
    (local $r i32) (local $t i32) (local $i i32) (local $j i32) (local $rb i32) (local $w0 i32) (local $w1 i32) (local $w2 i32) (local $w3 i32)
    (local $xo i32) (local $xl v128) (local $xh v128) (local $h v128) (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $o i32)
    (local.set $rb (i32.shl (local.get $cols) (i32.const 1)))
    (local.set $r (i32.const 0))
    (block $rdone (loop $rl
      (br_if $rdone (i32.ge_s (local.get $r) (local.get $rows)))
      ;; rows r..r+3 (a short last block repeats its last row; only real rows are stored)
      (local.set $w0 (i32.add (local.get $w) (i32.mul (local.get $r) (local.get $rb))))
      (local.set $w1 (select (i32.add (local.get $w0) (local.get $rb)) (local.get $w0) (i32.lt_s (i32.add (local.get $r) (i32.const 1)) (local.get $rows))))
      (local.set $w2 (select (i32.add (local.get $w1) (local.get $rb)) (local.get $w1) (i32.lt_s (i32.add (local.get $r) (i32.const 2)) (local.get $rows))))
      (local.set $w3 (select (i32.add (local.get $w2) (local.get $rb)) (local.get $w2) (i32.lt_s (i32.add (local.get $r) (i32.const 3)) (local.get $rows))))
      (local.set $t (i32.const 0))
      (block $tdone (loop $tl
        (br_if $tdone (i32.ge_s (local.get $t) (local.get $n)))
        (local.set $xo (i32.add (local.get $x) (i32.mul (local.get $t) (i32.shl (local.get $cols) (i32.const 2)))))
        (local.set $a0 (v128.const i32x4 0 0 0 0)) (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0)) (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $i (i32.const 0)) (local.set $j (i32.const 0))
        (block $idone (loop $il
          (br_if $idone (i32.ge_s (local.get $i) (local.get $rb)))
          (local.set $xl (v128.load (i32.add (local.get $xo) (local.get $j))))
          (local.set $xh (v128.load offset=16 (i32.add (local.get $xo) (local.get $j))))
          (local.set $h (v128.load (i32.add (local.get $w0) (local.get $i))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.add (f32x4.mul (local.get $xl) (call $h2f (i32x4.extend_low_i16x8_u (local.get $h)))) (f32x4.mul (local.get $xh) (call $h2f (i32x4.extend_high_i16x8_u (local.get $h)))))))
          (local.set $h (v128.load (i32.add (local.get $w1) (local.get $i))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.add (f32x4.mul (local.get $xl) (call $h2f (i32x4.extend_low_i16x8_u (local.get $h)))) (f32x4.mul (local.get $xh) (call $h2f (i32x4.extend_high_i16x8_u (local.get $h)))))))
          (local.set $h (v128.load (i32.add (local.get $w2) (local.get $i))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.add (f32x4.mul (local.get $xl) (call $h2f (i32x4.extend_low_i16x8_u (local.get $h)))) (f32x4.mul (local.get $xh) (call $h2f (i32x4.extend_high_i16x8_u (local.get $h)))))))
          (local.set $h (v128.load (i32.add (local.get $w3) (local.get $i))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.add (f32x4.mul (local.get $xl) (call $h2f (i32x4.extend_low_i16x8_u (local.get $h)))) (f32x4.mul (local.get $xh) (call $h2f (i32x4.extend_high_i16x8_u (local.get $h)))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (local.set $j (i32.add (local.get $j) (i32.const 32)))
          (br $il)))
        (local.set $o (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $outStride)) (local.get $r)) (i32.const 2))))
        (f32.store (local.get $o) (call $hsum (local.get $a0)))
        (if (i32.lt_s (i32.add (local.get $r) (i32.const 1)) (local.get $rows)) (then (f32.store offset=4 (local.get $o) (call $hsum (local.get $a1)))))
        (if (i32.lt_s (i32.add (local.get $r) (i32.const 2)) (local.get $rows)) (then (f32.store offset=8 (local.get $o) (call $hsum (local.get $a2)))))
        (if (i32.lt_s (i32.add (local.get $r) (i32.const 3)) (local.get $rows)) (then (f32.store offset=12 (local.get $o) (call $hsum (local.get $a3)))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br $tl)))
      (local.set $r (i32.add (local.get $r) (i32.const 4)))
      (br $rl))))

  ;; Quest page scores: out[p] = sum_i max(q_i*max_i, q_i*min_i) for pages p < np of one KV head;
  ;; kmin/kmax point at physical page 0 of that head, pages `stride` bytes apart; logical page p is
  ;; physical page table[p]; hd % 4 == 0
  ;; Quest's page scores for the nq query heads of one KV head (q: nq rows of hd floats): out row j (at
  ;; out + j * outStride floats) gets, for logical pages 0..np-1, Σ_i max(q_i·max_i, q_i·min_i). The pages'
  ;; min/max are read from memory once for all nq heads (they stay in L1 between the heads).
  (func (export "page_scores") (param $q i32) (param $nq i32) (param $kmin i32) (param $kmax i32) (param $table i32) (param $hd i32)
                               (param $np i32) (param $stride i32) (param $out i32) (param $outStride i32) (param $bf16 i32)
    (local $p i32) (local $i i32) (local $j i32) (local $hb i32) (local $acc v128) (local $qv v128) (local $mn i32) (local $mx i32) (local $po i32) (local $qp i32)
    (local $ih i32)
    (local.set $hb (i32.shl (local.get $hd) (i32.const 2)))
    (block $pd (loop $pl
      (br_if $pd (i32.ge_s (local.get $p) (local.get $np)))
      (local.set $po (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (local.get $p) (i32.const 2)))) (local.get $stride)))
      (local.set $mn (i32.add (local.get $kmin) (local.get $po)))
      (local.set $mx (i32.add (local.get $kmax) (local.get $po)))
      (local.set $j (i32.const 0))
      (block $jd (loop $jl
        (br_if $jd (i32.ge_s (local.get $j) (local.get $nq)))
        (local.set $qp (i32.add (local.get $q) (i32.mul (local.get $j) (local.get $hb))))
        (local.set $acc (v128.const i32x4 0 0 0 0))
        (local.set $i (i32.const 0))
        (if (local.get $bf16) (then
        ;; bf16 min/max (rows of hd * 2 bytes), widened as they are loaded
        (block $id2 (loop $il2
          (br_if $id2 (i32.ge_s (local.get $i) (local.get $hb)))
          (local.set $qv (v128.load (i32.add (local.get $qp) (local.get $i))))
          (local.set $ih (i32.shr_u (local.get $i) (i32.const 1)))
          (local.set $acc (f32x4.add (local.get $acc)
            (f32x4.max (f32x4.mul (local.get $qv) (i32x4.shl (v128.load16x4_u (i32.add (local.get $mx) (local.get $ih))) (i32.const 16)))
                       (f32x4.mul (local.get $qv) (i32x4.shl (v128.load16x4_u (i32.add (local.get $mn) (local.get $ih))) (i32.const 16))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $il2))))
        (else
        (block $id (loop $il
          (br_if $id (i32.ge_s (local.get $i) (local.get $hb)))
          (local.set $qv (v128.load (i32.add (local.get $qp) (local.get $i))))
          (local.set $acc (f32x4.add (local.get $acc)
            (f32x4.max (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $mx) (local.get $i))))
                       (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $mn) (local.get $i)))))))
          (local.set $i (i32.add (local.get $i) (i32.const 16)))
          (br $il)))))
        (f32.store (i32.add (local.get $out) (i32.shl (i32.add (i32.mul (local.get $j) (local.get $outStride)) (local.get $p)) (i32.const 2)))
                   (call $hsum (local.get $acc)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $jl)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $pl))))
)
