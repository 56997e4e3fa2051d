namespace Dtrain.Collective;

/// <summary>A neighbour could not be reached, closed its stream, refused the ring, or sent something malformed.</summary>
public class RingTransportException(string message, int peerRank, string peer, Exception? inner = null)
    : IOException(message, inner)
{
    /// <summary>The rank of the neighbour involved (-1 if unknown).</summary>
    public int PeerRank { get; } = peerRank;

    /// <summary>The neighbour's description (rank and address).</summary>
    public string Peer { get; } = peer;
}
