"""terraform"""
