using System.Runtime.CompilerServices;

namespace Dtrain.Tests.Support;

/// <summary>Process-wide test set-up: one intra-op torch thread, since xunit runs test classes in parallel on 2 cores.</summary>
internal static class TestEnvironment
{
    [ModuleInitializer]
    internal static void Init() => TorchSharp.torch.set_num_threads(1);
}
