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

  ;; Attention of one query head over n tokens of a paged cache:
  ;;   tokens: pointer to n i32 token ids, or 0 for tokens 0..n-1
  ;;   token t's key is at kBase + table[t / P] * pageStride + (t % P) * hd * 4 (likewise vBase): table maps
  ;;   the sequence's logical pages to physical ones (int32 each)
  ;;   probs (n f32, padded to a multiple of 4) receives the softmax weights; out (hd f32) the result.
  (func (export "attend") (param $q i32) (param $kBase i32) (param $vBase i32) (param $table i32) (param $pageStride i32) (param $P i32) (param $hd i32)
                          (param $tokens i32) (param $n i32) (param $scale f32) (param $probs i32) (param $out i32)
    (local $i i32) (local $t i32) (local $off i32) (local $s f32) (local $max f32) (local $sum v128) (local $m4 v128)
    (local $e v128) (local $inv f32) (local $d i32) (local $p v128) (local $hb i32) (local $n4 i32) (local $vo i32)
    (local.set $hb (i32.shl (local.get $hd) (i32.const 2)))
    (local.set $max (f32.const -inf))
    ;; scores
    (local.set $i (i32.const 0))
    (block $sd (loop $sl
      (br_if $sd (i32.ge_s (local.get $i) (local.get $n)))
      (local.set $t (if (result i32) (i32.eqz (local.get $tokens)) (then (local.get $i))
                      (else (i32.load (i32.add (local.get $tokens) (i32.shl (local.get $i) (i32.const 2)))))))
      (local.set $off (i32.add (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (i32.div_u (local.get $t) (local.get $P)) (i32.const 2)))) (local.get $pageStride))
                               (i32.mul (i32.rem_u (local.get $t) (local.get $P)) (local.get $hb))))
      (local.set $s (f32.mul (call $dot (local.get $q) (i32.add (local.get $kBase) (local.get $off)) (local.get $hd)) (local.get $scale)))
      (f32.store (i32.add (local.get $probs) (i32.shl (local.get $i) (i32.const 2))) (local.get $s))
      (local.set $max (f32.max (local.get $max) (local.get $s)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $sl)))
    ;; pad to a multiple of 4 with -inf so the vector exp adds nothing
    (local.set $n4 (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)))
    (block $pd (loop $pl
      (br_if $pd (i32.ge_s (local.get $i) (local.get $n4)))
      (f32.store (i32.add (local.get $probs) (i32.shl (local.get $i) (i32.const 2))) (f32.const -inf))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $pl)))
    ;; exp and sum
    (local.set $m4 (f32x4.splat (local.get $max)))
    (local.set $i (i32.const 0))
    (block $ed (loop $el
      (br_if $ed (i32.ge_s (local.get $i) (local.get $n4)))
      (local.set $off (i32.add (local.get $probs) (i32.shl (local.get $i) (i32.const 2))))
      (local.set $e (call $exp4 (f32x4.sub (v128.load (local.get $off)) (local.get $m4))))
      ;; lanes that were -inf (padding) must give 0: exp4 clamps, so mask them
      (local.set $e (v128.and (local.get $e) (f32x4.gt (v128.load (local.get $off)) (f32x4.splat (f32.const -inf)))))
      (v128.store (local.get $off) (local.get $e))
      (local.set $sum (f32x4.add (local.get $sum) (local.get $e)))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br $el)))
    (local.set $inv (f32.div (f32.const 1) (call $hsum (local.get $sum))))
    ;; out = sum_i p_i v_i
    (local.set $d (i32.const 0))
    (block $zd (loop $zl
      (br_if $zd (i32.ge_s (local.get $d) (local.get $hb)))
      (v128.store (i32.add (local.get $out) (local.get $d)) (v128.const i32x4 0 0 0 0))
      (local.set $d (i32.add (local.get $d) (i32.const 16)))
      (br $zl)))
    (local.set $i (i32.const 0))
    (block $ad (loop $al
      (br_if $ad (i32.ge_s (local.get $i) (local.get $n)))
      (local.set $t (if (result i32) (i32.eqz (local.get $tokens)) (then (local.get $i))
                      (else (i32.load (i32.add (local.get $tokens) (i32.shl (local.get $i) (i32.const 2)))))))
      (local.set $vo (i32.add (local.get $vBase) (i32.add (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (i32.div_u (local.get $t) (local.get $P)) (i32.const 2)))) (local.get $pageStride))
                                                           (i32.mul (i32.rem_u (local.get $t) (local.get $P)) (local.get $hb)))))
      (local.set $off (i32.add (local.get $probs) (i32.shl (local.get $i) (i32.const 2))))
      (local.set $s (f32.mul (f32.load (local.get $off)) (local.get $inv)))
      (f32.store (local.get $off) (local.get $s))
      (local.set $p (f32x4.splat (local.get $s)))
      (local.set $d (i32.const 0))
      (block $vd (loop $vl
        (br_if $vd (i32.ge_s (local.get $d) (local.get $hb)))
        (v128.store (i32.add (local.get $out) (local.get $d))
          (f32x4.add (v128.load (i32.add (local.get $out) (local.get $d)))
                     (f32x4.mul (local.get $p) (v128.load (i32.add (local.get $vo) (local.get $d))))))
        (local.set $d (i32.add (local.get $d) (i32.const 16)))
        (br $vl)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $al))))
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
  (func (export "page_scores") (param $q i32) (param $kmin i32) (param $kmax i32) (param $table i32) (param $hd i32) (param $np i32) (param $stride i32) (param $out i32)
    (local $p i32) (local $i i32) (local $hb i32) (local $acc v128) (local $qv v128) (local $mn i32) (local $mx i32) (local $po i32)
    (local.set $hb (i32.shl (local.get $hd) (i32.const 2)))
    (block $pd (loop $pl
      (br_if $pd (i32.ge_s (local.get $p) (local.get $np)))
      (local.set $acc (v128.const i32x4 0 0 0 0))
      (local.set $po (i32.mul (i32.load (i32.add (local.get $table) (i32.shl (local.get $p) (i32.const 2)))) (local.get $stride)))
      (local.set $mn (i32.add (local.get $kmin) (local.get $po)))
      (local.set $mx (i32.add (local.get $kmax) (local.get $po)))
      (local.set $i (i32.const 0))
      (block $id (loop $il
        (br_if $id (i32.ge_s (local.get $i) (local.get $hb)))
        (local.set $qv (v128.load (i32.add (local.get $q) (local.get $i))))
        (local.set $acc (f32x4.add (local.get $acc)
          (f32x4.max (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $mx) (local.get $i))))
                     (f32x4.mul (local.get $qv) (v128.load (i32.add (local.get $mn) (local.get $i)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $il)))
      (f32.store (i32.add (local.get $out) (i32.shl (local.get $p) (i32.const 2))) (call $hsum (local.get $acc)))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $pl))))
)
