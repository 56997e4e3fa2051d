namespace Dtrain.Cluster;

/// <summary>What a worker built for its assignment: how many parameters, their checksum (all replicas must start alike), and their whole-model names in order.</summary>
public sealed record AssignResult(long Parameters, double ParameterChecksum, IReadOnlyList<string> ParameterNames);
