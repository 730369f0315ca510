#pragma once
// kern::nn: modules, layers and initializers.
#include <kern/nn/activation.hpp>
#include <kern/nn/container.hpp>
#include <kern/nn/conv.hpp>
#include <kern/nn/dropout.hpp>
#include <kern/nn/functional_call.hpp>
#include <kern/nn/grad_sample.hpp>
#include <kern/nn/init.hpp>
#include <kern/nn/linear.hpp>
#include <kern/nn/module.hpp>
#include <kern/nn/norm.hpp>
#include <kern/nn/pool.hpp>
