#pragma once
// The umbrella header: everything a training script needs.
#include <kern/autograd.hpp>
#include <kern/backend.hpp>
#include <kern/dtype.hpp>
#include <kern/error.hpp>
#include <kern/functional.hpp>
#include <kern/generator.hpp>
#include <kern/io/checkpoint.hpp>
#include <kern/io/safetensors.hpp>
#include <kern/memory.hpp>
#include <kern/data/data.hpp>
#include <kern/nn/nn.hpp>
#include <kern/ops.hpp>
#include <kern/progress.hpp>
#include <kern/shape.hpp>
#include <kern/tensor.hpp>
