namespace Dtrain.Distributed;

/// <summary>What <see cref="WorkerActivity"/> says at one moment.</summary>
public sealed record ActivitySnapshot(string Phase, string Detail, long Step, TimeSpan InPhase, string WaitingOn, string JobId, string SubPhase, int Piece, int Pieces, string Transport);
