"""Query-to-product retrieval (the ESCI task of CAT-ID2): sparse, dense and generative retrievers."""
