"""Alert → model input: THE preprocessing of the cutouts and the metadata features.

Serving and training both import it from here, so a stamp is prepared one way only.
"""
