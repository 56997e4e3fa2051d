namespace Dtrain.Tests.Support;

/// <summary>
/// Tests that compare runs drawing from torch's process-wide random generator (dropout, resumed RNG state) run
/// alone: any other test building a model or running dropout at the same time draws from the same generator.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchRngCollection
{
    public const string Name = "torch's process-wide RNG";
}
