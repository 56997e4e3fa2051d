using Dtrain.Distributed;
using Dtrain.Models;
using Dtrain.Specs;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Training;

/// <summary>
/// Torch calls made outside the training step's dispose scopes — building a model, capturing a checkpoint, parameter
/// checksums — while another thread collects garbage and runs finalizers flat out. Any thread that allocates can start a
/// collection at any moment (a SIGTERM or Ctrl-C handler, RPC threads): a temporary tensor or Scalar that nothing
/// references any more is then freed while libtorch still uses it. Seen that way: "Expected false to be true" from
/// Scalar::toFloat in fill_ while a model was built, and a segmentation fault while a checkpoint was captured (in
/// `dtrain train` processes run with a collector thread and glibc's MALLOC_PERTURB_, 3 of 45 runs before the fix).
/// Here the finalizer must free a temporary within the one native call that uses it, so these rounds guard against
/// regressions but seldom fail without the fix (they did not in 6 runs on the machine they were written on).
/// </summary>
[Collection(TorchRngCollection.Name)]
public class ConstantCollectionTests
{
    [Fact]
    public void Recurrent_stacks_build_with_their_gate_bias_under_constant_garbage_collection()
    {
        // The memory gate's bias is filled through a view with a Scalar, before any dispose scope exists.
        const int rounds = 300;
        var run = GcPressure.While(rounds, k =>
        {
            var cell = k % 2 == 0 ? CellKinds.Lstm : CellKinds.Gru;
            using var stack = new RecurrentStack(cell, 4, 8, 2, 0.0, bidirectional: false, memoryGateBias: 1.5);
            foreach (var (name, p) in stack.named_parameters())
            {
                if (!name.StartsWith("bias_", StringComparison.Ordinal)) continue;
                using var gate = p[8..16];
                var expected = name.StartsWith("bias_ih", StringComparison.Ordinal) ? 1.5f : 0f;
                if (gate.data<float>().ToArray().Any(v => v != expected)) throw new InvalidOperationException($"{cell} {name}: the memory gate's bias is not what was set");
            }
        }, untilCollections: 100);
        GcPressure.AssertClean(run);
    }

    [Fact]
    public void Checkpoints_captured_under_constant_garbage_collection_hold_the_generator_state()
    {
        // FiniteParameters' counts and the generator's state are read from temporaries outside any dispose scope.
        var spec = TestJobs.CharLm("t.txt");
        using var engine = new TrainingEngine(spec, 20, 0, CPU);
        var tokenizer = Dtrain.Data.TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(1)]);
        var state = new TrainingState { Step = 3 };
        byte[] expected;
        using (var rng = random.get_rng_state()) expected = rng.bytes.ToArray();
        const int rounds = 300;
        var run = GcPressure.While(rounds, _ =>
        {
            var data = TrainingCheckpoint.Capture(spec, tokenizer, Dtrain.Data.LabelSet.Empty, state, engine);
            if (!data.Sections[TrainingCheckpoint.Rng].AsSpan().SequenceEqual(expected)) throw new InvalidOperationException("the captured generator state differs from the generator's");
        }, untilCollections: 100);
        GcPressure.AssertClean(run);
    }

    [Fact]
    public void Parameter_checksums_under_constant_garbage_collection_are_exact()
    {
        // Replicas compare these sums after every resume and reconfiguration, while RPC threads allocate all the time.
        var ps = Enumerable.Range(0, 32).Select(i => new TorchSharp.Modules.Parameter(full(8, 0.5f + i))).ToList();
        var expected = ParameterChecksums.Sum(ps);
        const int rounds = 300;
        var run = GcPressure.While(rounds, _ =>
        {
            var sum = ParameterChecksums.Sum(ps);
            if (sum != expected) throw new InvalidOperationException($"checksum {sum}, expected {expected}");
        }, untilCollections: 100);
        GcPressure.AssertClean(run);
        foreach (var p in ps) p.Dispose();
    }
}
