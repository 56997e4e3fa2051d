using Dtrain.Specs;
using Dtrain.Training.Tasks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dtrain.Models;

/// <summary>Builds the model a spec asks for, seeded so every replica starts from the same weights.</summary>
public static class ModelFactory
{
    // Torch's default generator is process-wide: seeding and drawing the initial weights must not interleave
    // with another thread doing the same (several replicas in one process, parallel tests).
    private static readonly Lock SeedLock = new();

    /// <summary>
    /// The spec's task builds the model (<see cref="ITrainingTask.CreateModel"/>).
    /// <paramref name="perLayer"/>: a language model with one module per recurrent layer (same parameters and results; see
    /// <see cref="RecurrentStack"/>). CPU only: moving the model to another device would not move the layer modules,
    /// whose parameters are registered by name rather than as children; elsewhere the fused stack is built.
    /// </summary>
    public static nn.Module Create(JobSpec spec, int vocabSize, int classes, Device device, bool perLayer = false)
    {
        if (vocabSize < 3) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "vocabulary must hold <pad>, <unk> and at least one token");
        var task = TrainingTasks.For(spec);
        if (classes < task.MinimumLabels) throw new ArgumentOutOfRangeException(nameof(classes), classes, $"a classifier needs at least {task.MinimumLabels} classes");
        nn.Module model;
        lock (SeedLock)
        {
            random.manual_seed(spec.Training.Seed);
            model = task.CreateModel(spec.Model, vocabSize, classes, perLayer && device.type == DeviceType.CPU);
        }
        return model.to(device);
    }

    /// <summary>
    /// Runs <paramref name="create"/> under the lock that seeding holds: building modules draws initial weights from
    /// torch's process-wide generator, which would otherwise shift a seeded model being built on another thread.
    /// </summary>
    public static T Locked<T>(Func<T> create)
    {
        lock (SeedLock) return create();
    }

    public static long ParameterCount(nn.Module model) => model.parameters().Sum(p => p.numel());
}
