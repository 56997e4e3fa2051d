namespace Dtrain.Cluster;

/// <summary>What a resumed worker loaded: the checksum of its parameters and how many tensors.</summary>
public sealed record LoadStateResult(double ParameterChecksum, int Tensors);
