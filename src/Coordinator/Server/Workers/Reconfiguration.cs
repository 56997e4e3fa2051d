namespace Dtrain.Server;

/// <summary>What a change of a job's workers did: where training continues, who went, who came.</summary>
public sealed record Reconfiguration(long NextStep, long Generation, IReadOnlyList<string> Gone, IReadOnlyList<string> Joined, IReadOnlyList<string> Members);
