namespace Dtrain.Cluster;

/// <summary>Where a stopped worker stands: the index of the next step it would apply, and the checksum of its parameters there.</summary>
public sealed record StepStanding(long NextStep, double ParameterChecksum);
