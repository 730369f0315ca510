#pragma once
// Every op, by family. Each family's header documents shapes; each has one source file in
// framework/ops/ with forward and backward side by side.
#include <kern/ops/activation.hpp>
#include <kern/ops/conv.hpp>
#include <kern/ops/elementwise.hpp>
#include <kern/ops/fft.hpp>
#include <kern/ops/flip.hpp>
#include <kern/ops/grid_sample.hpp>
#include <kern/ops/index.hpp>
#include <kern/ops/linalg.hpp>
#include <kern/ops/loss.hpp>
#include <kern/ops/norm.hpp>
#include <kern/ops/pool.hpp>
#include <kern/ops/random.hpp>
#include <kern/ops/reduce.hpp>
#include <kern/ops/shape_ops.hpp>
